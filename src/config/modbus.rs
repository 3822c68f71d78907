//! The YAML of a `kind: modbus` device: where it is (an RTU port or a TCP
//! endpoint), how it is polled, and its register map.

use std::collections::HashMap;

use serde::Deserialize;

use crate::config::report::{self, Aggregate, Deadband, PointReport, Report};
use crate::config::{
    BatchConfig, Bounded, DeviceConfig, DeviceSpec, Duration, EntityHints, PointShape, PointSpec,
    WriteRange, duplicate_point_names,
};
use crate::reading::{Name, Priority, Qos};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    pub name: Name,
    /// The serial (RS-485) port the device is wired to; give `rtu` or `tcp`.
    #[serde(default)]
    pub rtu: Option<RtuPort>,
    /// The device's (or a Modbus TCP gateway's) address; give `rtu` or `tcp`.
    #[serde(default)]
    pub tcp: Option<TcpEndpoint>,
    /// Unit id (slave address): 1 to 247 on RTU, 0 to 255 on TCP.
    #[serde(default = "ModbusDevice::default_unit")]
    pub unit: u8,
    /// One reading per interval.
    #[serde(default = "ModbusDevice::default_poll")]
    pub poll: Duration,
    /// How long to wait for each answer.
    #[serde(default = "ModbusDevice::default_timeout")]
    pub timeout: Duration,
    /// Repeats of a failed request within one poll, while the device answers.
    #[serde(default = "ModbusDevice::default_retries")]
    pub retries: Bounded<0, 10>,
    /// `0` when `address` is the protocol address, `1` when the device's
    /// manual counts registers from 1 (the protocol address is one less).
    #[serde(default = "ModbusDevice::default_address_base")]
    pub address_base: Bounded<0, 1>,
    /// Unmapped registers (or bits) that may be read to join two ranges
    /// into one request.
    #[serde(default)]
    pub max_gap: u16,
    /// Registers per request, at most (the protocol allows 125).
    #[serde(default = "ModbusDevice::default_max_registers")]
    pub max_registers: Bounded<1, 125>,
    /// Coils or discrete inputs per request, at most (the protocol allows 2000).
    #[serde(default = "ModbusDevice::default_max_bits")]
    pub max_bits: Bounded<1, 2000>,
    /// Points with a `deadband` are published at least this often.
    #[serde(default = "ModbusDevice::default_heartbeat")]
    pub heartbeat: Duration,
    /// Reported `offline` when no poll read a value for this long; three
    /// polls when unset.
    #[serde(default)]
    pub offline_after: Option<Duration>,
    /// MQTT QoS of this device's readings; `mqtt.qos` when unset.
    #[serde(default)]
    pub qos: Option<Qos>,
    #[serde(default)]
    pub priority: Priority,
    /// Several readings per publish, as a JSON array.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
    pub points: Vec<ModbusPoint>,
}

/// A serial port and its line settings. Devices on the same port share it
/// and must agree on the settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuPort {
    /// Device path, e.g. `/dev/ttyUSB0` or `/dev/serial/by-id/…`.
    pub port: String,
    /// Bits per second.
    #[serde(default = "RtuPort::default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8.
    #[serde(default = "RtuPort::default_data_bits")]
    pub data_bits: Bounded<7, 8>,
    /// 1 or 2.
    #[serde(default = "RtuPort::default_stop_bits")]
    pub stop_bits: Bounded<1, 2>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// A Modbus TCP server. Devices at the same host and port share one
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpEndpoint {
    /// Host name or IP address.
    pub host: String,
    #[serde(default = "TcpEndpoint::default_port")]
    pub port: u16,
    /// `rtu` for a serial-to-Ethernet converter in raw mode (USR-TCP232,
    /// Moxa NPort): RTU frames with their CRC over the TCP stream.
    #[serde(default)]
    pub framing: Framing,
}

/// How Modbus requests are framed on a TCP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Modbus TCP: the MBAP header, no CRC.
    #[default]
    Tcp,
    /// Modbus RTU frames, as on the serial line.
    Rtu,
}

/// One value of the device's register map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusPoint {
    /// The key of the value in readings.
    pub name: Name,
    /// The data table: `coil`, `discrete`, `input` or `holding`.
    pub register: RegisterKind,
    /// Address of the first register or bit (see `address_base`).
    pub address: u32,
    /// `bool` for coils and discrete inputs, `u16` for registers when unset
    /// (`bool` when `bit` is set).
    #[serde(default, rename = "type")]
    pub value_type: Option<ValueType>,
    /// Registers of a `string` (two characters each).
    #[serde(default)]
    pub length: Option<u16>,
    /// Order of the registers of a 32- or 64-bit value; `big` when unset
    /// (most significant register first).
    #[serde(default)]
    pub word_order: Option<Order>,
    /// Order of the two bytes in each register; `big` when unset (high
    /// byte first, as the protocol sends them).
    #[serde(default)]
    pub byte_order: Option<Order>,
    /// One bit of a register, 0 (least significant) to 15.
    #[serde(default)]
    pub bit: Option<u8>,
    /// The value is `raw * scale + offset`.
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, for the reader of the configuration.
    #[serde(default)]
    pub unit: Option<String>,
    /// How Home Assistant shows it.
    #[serde(default)]
    pub homeassistant: EntityHints,
    /// Publish only when the value moved more than this (a number, or a
    /// percentage such as `2%`) since it was last published (or `heartbeat`
    /// passed); unset: every poll.
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Publish one summary per window instead of every poll.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
    /// Whether commands may write this point (coils and holding registers).
    #[serde(default)]
    pub writable: bool,
    /// Lowest value a write may set.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a write may set.
    #[serde(default)]
    pub max: Option<f64>,
}

impl ModbusDevice {
    fn default_unit() -> u8 {
        1
    }
    fn default_poll() -> Duration {
        Duration::from_secs(5)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_address_base() -> Bounded<0, 1> {
        Bounded(0)
    }
    fn default_retries() -> Bounded<0, 10> {
        Bounded(1)
    }
    fn default_max_registers() -> Bounded<1, 125> {
        Bounded(u64::from(MAX_REGISTERS))
    }
    fn default_max_bits() -> Bounded<1, 2000> {
        Bounded(u64::from(MAX_BITS))
    }
    fn default_heartbeat() -> Duration {
        report::DEFAULT_HEARTBEAT
    }
}

impl RtuPort {
    fn default_baud() -> u32 {
        9600
    }
    fn default_data_bits() -> Bounded<7, 8> {
        Bounded(8)
    }
    fn default_stop_bits() -> Bounded<1, 2> {
        Bounded(1)
    }
}

impl TcpEndpoint {
    fn default_port() -> u16 {
        502
    }
}

impl ModbusPoint {
    pub fn value_type(&self) -> ValueType {
        match self.value_type {
            Some(t) => t,
            None if self.register.is_bits() || self.bit.is_some() => ValueType::Bool,
            None => ValueType::U16,
        }
    }

    /// The 0-based protocol address (`base` is 0 or 1).
    pub fn protocol_address(&self, base: u64) -> u16 {
        let address = u64::from(self.address).saturating_sub(base);
        u16::try_from(address).unwrap_or(u16::MAX)
    }

    fn report(&self) -> PointReport {
        PointReport {
            deadband: self.deadband,
            aggregate: self.aggregate.clone(),
        }
    }

    /// Registers (or bits) the point spans.
    pub fn width(&self) -> u16 {
        match self.value_type() {
            _ if self.register.is_bits() => 1,
            ValueType::String => self.length.unwrap_or(1).max(1),
            t => t.words(),
        }
    }

    /// Problems of this point alone, as (key, message).
    fn problems(&self, device: &ModbusDevice) -> Vec<(&'static str, String)> {
        let t = self.value_type();
        let bits = self.register.is_bits();
        let numeric = t.is_numeric();
        let on_bits = "to coils and discrete inputs";
        let on_text = "to `bool` and `string` points";
        let read_only = "to points that are not writable";
        let mut found: Vec<(&'static str, String)> = [
            ("byte_order", bits && self.byte_order.is_some(), on_bits),
            ("bit", bits && self.bit.is_some(), on_bits),
            (
                "word_order",
                self.word_order.is_some() && t.words() == 1,
                "to 16-bit types, bools and strings",
            ),
            (
                "length",
                self.length.is_some() && t != ValueType::String,
                "to types other than `string`",
            ),
            ("scale", self.scale.is_some() && !numeric, on_text),
            ("offset", self.offset.is_some() && !numeric, on_text),
            ("min", self.min.is_some() && !self.writable, read_only),
            ("max", self.max.is_some() && !self.writable, read_only),
        ]
        .into_iter()
        .filter(|(_, set, _)| *set)
        .map(|(key, _, why)| (key, format!("does not apply {why}")))
        .collect();
        if bits && t != ValueType::Bool {
            found.push(("type", "coils and discrete inputs are `bool`".into()));
        }
        if t == ValueType::String && self.length.is_none() {
            found.push(("length", "a `string` needs its length in registers".into()));
        }
        if self.length == Some(0) {
            found.push(("length", "must be at least 1".into()));
        }
        if let Some(bit) = self.bit {
            if bit > 15 {
                found.push((
                    "bit",
                    format!("{bit} is not a bit of a register, expected 0 to 15"),
                ));
            }
            if t != ValueType::Bool {
                found.push(("type", "a `bit` is a `bool`".into()));
            }
        }
        let base = device.address_base.get();
        let limit = if bits {
            device.max_bits.get()
        } else {
            device.max_registers.get()
        };
        if u64::from(self.address) < base {
            found.push(("address", format!("must be at least {base} (address_base)")));
        } else if u64::from(self.protocol_address(base)) + u64::from(self.width()) > 1 << 16 {
            found.push((
                "address",
                format!(
                    "the point ends beyond the last protocol address, 65535 (address_base: {base})"
                ),
            ));
        }
        if u64::from(self.width()) > limit {
            found.push((
                "length",
                format!(
                    "{} registers do not fit one request (max_registers: {limit})",
                    self.width()
                ),
            ));
        }
        if self.scale.is_some_and(|s| s == 0.0 || !s.is_finite()) {
            found.push(("scale", "expected a finite number other than 0".into()));
        }
        for (key, v) in [
            ("offset", self.offset),
            ("min", self.min),
            ("max", self.max),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                found.push((key, "expected a finite number".into()));
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            found.push(("max", format!("must not be below min ({min})")));
        }
        if self.writable {
            if !matches!(self.register, RegisterKind::Coil | RegisterKind::Holding) {
                let table = self.register.as_str();
                found.push(("writable", format!("{table} registers are read-only: only coils and holding registers can be written")));
            } else if self.bit.is_some() {
                found.push((
                    "writable",
                    "writing one bit of a register is not supported".into(),
                ));
            }
        }
        found
    }
}

impl DeviceSpec for ModbusDevice {
    crate::common_device_fields!();
    fn points(&self) -> Vec<PointSpec> {
        let spec = |p: &ModbusPoint| PointSpec {
            name: p.name.to_string(),
            writable: p.writable,
            min: p.min,
            max: p.max,
        };
        self.points.iter().map(spec).collect()
    }

    /// A scaled or offset value is a float whatever its registers hold.
    fn shapes(&self) -> Vec<PointShape> {
        let shape = |p: &ModbusPoint| {
            let t = match (p.scale, p.offset) {
                (None, None) => p.value_type(),
                _ => ValueType::F64,
            };
            let shape = PointShape::new(&p.name, t, p.aggregate.as_ref());
            let mut shape = shape.shown(p.unit.as_ref(), &p.homeassistant);
            if p.writable {
                let whole = !matches!(t, ValueType::F32 | ValueType::F64);
                shape.write = Some(WriteRange {
                    min: p.min,
                    max: p.max,
                    step: p.scale.or(whole.then_some(1.0)),
                });
            }
            shape
        };
        self.points.iter().map(shape).collect()
    }

    fn offline_after(&self) -> Duration {
        report::offline_after_polls(self.offline_after, self.poll)
    }

    fn report(&self) -> Report {
        Report {
            heartbeat: self.heartbeat,
            deadband: None,
            points: (self.points.iter())
                .map(|p| (p.name.to_string(), p.report()))
                .collect(),
        }
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut push = |path: &str, message: String| found.push((path.to_owned(), message));
        match (&self.rtu, &self.tcp) {
            (None, None) => push(
                "rtu",
                "expected `rtu: { port: … }` or `tcp: { host: … }`".into(),
            ),
            (Some(_), Some(_)) => push("tcp", "give either `rtu` or `tcp`, not both".into()),
            (Some(rtu), None) => {
                if !(1..=247).contains(&self.unit) {
                    push(
                        "unit",
                        format!("{} is not an RTU unit id, expected 1 to 247", self.unit),
                    );
                }
                if rtu.port.is_empty() {
                    push(
                        "rtu.port",
                        "expected a device path such as /dev/ttyUSB0".into(),
                    );
                }
                if rtu.baud == 0 {
                    push("rtu.baud", "must be at least 1".into());
                }
            }
            (None, Some(tcp)) => {
                if tcp.host.is_empty() {
                    push("tcp.host", "expected a host name or IP address".into());
                }
                if tcp.port == 0 {
                    push("tcp.port", "expected a port from 1 to 65535".into());
                }
            }
        }
        for (key, d) in [
            ("poll", self.poll),
            ("timeout", self.timeout),
            ("heartbeat", self.heartbeat),
            ("offline_after", self.offline_after.unwrap_or(self.poll)),
        ] {
            if d.get().is_zero() {
                push(key, "must be at least 1ms".into());
            }
        }
        if self.points.is_empty() {
            push("points", "expected at least one point".into());
        }
        for (path, message) in duplicate_point_names(self.points.iter().map(|p| &p.name)) {
            push(&path, message);
        }
        for (i, point) in self.points.iter().enumerate() {
            for (key, message) in point.problems(self) {
                push(&format!("points[{i}].{key}"), message);
            }
            let numeric = point.value_type().is_numeric();
            let path = format!("points[{i}]");
            for (path, message) in report::point_problems(&path, &point.report(), numeric) {
                push(&path, message);
            }
        }
        found
    }
}

/// The protocol's ceilings: a read returns at most 125 registers (function
/// 3 and 4) or 2000 bits (function 1 and 2).
pub const MAX_REGISTERS: u16 = 125;
pub const MAX_BITS: u16 = 2000;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Read-write bits (functions 1, 5, 15).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
    /// Read-only 16-bit registers (function 4).
    Input,
    /// Read-write 16-bit registers (functions 3, 6, 16).
    Holding,
}

impl RegisterKind {
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        }
    }
}

/// How the words of a point are read as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Bool,
    #[default]
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl ValueType {
    /// Registers a value of this type takes (`String`: see `length`).
    pub fn words(self) -> u16 {
        match self {
            ValueType::Bool | ValueType::U16 | ValueType::I16 | ValueType::String => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, ValueType::Bool | ValueType::String)
    }
}

/// Which comes first: the most significant part (`big`) or the least
/// significant one (`little`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Big,
    Little,
}

/// Checks across devices, as (path, message): devices that share a serial
/// port must agree on its line settings.
pub fn shared_problems(devices: &[DeviceConfig]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut first_on_port: HashMap<&str, (usize, &RtuPort)> = HashMap::new();
    for (i, device) in devices.iter().enumerate() {
        let DeviceConfig::Modbus(ModbusDevice { rtu: Some(rtu), .. }) = device else {
            continue;
        };
        match first_on_port.get(rtu.port.as_str()) {
            None => {
                first_on_port.insert(&rtu.port, (i, rtu));
            }
            Some((first, settings)) if *settings != rtu => found.push((
                format!("devices[{i}].rtu"),
                format!(
                    "{} is already used by devices[{first}] with other settings; devices on one port share baud, parity, data_bits and stop_bits",
                    rtu.port
                ),
            )),
            Some(_) => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, load_str};

    const HEAD: &str = "gateway: { id: gw }\nmqtt: { url: \"mqtt://127.0.0.1:1883\" }\ndevices:\n";

    fn problems(devices: &str) -> Vec<(usize, String)> {
        match load_str(&format!("{HEAD}{devices}"), "f.yaml") {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| (p.mark.map_or(0, |m| m.line), p.to_string()))
                .collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn cross_field_problems_name_their_key() {
        let found = problems(
            "  - name: m\n    kind: modbus\n    address_base: 1\n    points:\n      - { name: a, register: input, address: 0, writable: true }\n      - { name: a, register: holding, address: 5, type: string }\n",
        );
        let texts: Vec<&str> = found.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "devices[0].rtu: expected `rtu: { port: … }` or `tcp: { host: … }`",
                "devices[0].points[0].address: must be at least 1 (address_base)",
                "devices[0].points[0].writable: input registers are read-only: only coils and holding registers can be written",
                "devices[0].points[1].length: a `string` needs its length in registers",
                "devices[0].points[1].name: duplicate point name `a`, already used by points[0]",
            ]
        );
        assert_eq!(found[1].0, 8, "at the point's line");
    }

    #[test]
    fn unknown_orders_and_tables_list_the_choices() {
        let found = problems(
            "  - name: m\n    kind: modbus\n    tcp: { host: h }\n    points:\n      - { name: a, register: inputs, address: 0, byte_order: middle }\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].1.ends_with(
            "did you mean `input`? Expected one of `coil`, `discrete`, `input`, `holding`"
        ));
        assert!(
            found[1]
                .1
                .ends_with("unknown value `middle`, expected `big` or `little`")
        );
    }
}
