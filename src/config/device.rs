//! The `devices:` list: one entry per device, its `kind` naming the source
//! that owns it. Each kind's settings have a file of their own beside this
//! one (`modbus.rs`, `serial.rs`, `ble.rs`, `simulated.rs`); this file only
//! lists the kinds.

use serde::Deserialize;

use super::ble::BleDevice;
use super::entity::EntityHints;
use super::modbus::{ModbusDevice, ValueType};
use super::report::{Aggregate, Function};
use super::serial::SerialDevice;
use super::simulated::SimulatedDevice;
use super::{Bounded, ByteSize, Delivery, Duration, Name, Priority, Qos, yaml};

/// What every kind of device has, whatever else it has.
pub trait DeviceSpec {
    fn name(&self) -> &Name;
    /// MQTT QoS of its readings; `mqtt.qos` when `None`.
    fn qos(&self) -> Option<Qos>;
    fn priority(&self) -> Priority;
    /// Several readings per publish, as a JSON array.
    fn batch(&self) -> Option<&BatchConfig> {
        None
    }
    /// The device's points, and which of them commands may write.
    fn points(&self) -> Vec<PointSpec>;
    /// The points its readings carry, with their types, for protocols that
    /// declare them up front (Sparkplug births). Kinds whose points come
    /// from a decoder list none: their types are learned from the readings.
    fn shapes(&self) -> Vec<PointShape> {
        Vec::new()
    }
    /// What it sends of its readings (deadbands, windows, heartbeat).
    fn report(&self) -> super::report::Report {
        super::report::Report::default()
    }
    /// How long without a reading that carries a value before the device
    /// is reported `offline` (`offline_after`, or its kind's default).
    fn offline_after(&self) -> Duration;
    /// Checks across fields, as (path below the device, message).
    fn problems(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The `DeviceSpec` accessors of the fields every kind of device has
/// (`name`, `qos`, `priority`, `batch`), for use inside its impl.
#[macro_export]
macro_rules! common_device_fields {
    () => {
        fn name(&self) -> &$crate::reading::Name {
            &self.name
        }
        fn qos(&self) -> Option<$crate::reading::Qos> {
            self.qos
        }
        fn priority(&self) -> $crate::reading::Priority {
            self.priority
        }
        fn batch(&self) -> Option<&$crate::config::BatchConfig> {
            self.batch.as_ref()
        }
    };
}

/// A point as commands see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    pub name: String,
    pub writable: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A point as its readings carry it: the type of its value and, when it
/// is summarised in windows, the functions of its summary; its unit and
/// how Home Assistant shows it; and, when commands may write it, its range.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointShape {
    pub name: String,
    pub value_type: ValueType,
    pub functions: Vec<Function>,
    pub unit: Option<String>,
    pub hints: EntityHints,
    pub write: Option<WriteRange>,
}

/// What a command may write to a point.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WriteRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The smallest change the point can take (its `scale`; 1 for whole
    /// numbers); `None` for floats.
    pub step: Option<f64>,
}

impl PointShape {
    /// A point of `value_type`, summarised by `aggregate` when set.
    pub fn new(name: &Name, value_type: ValueType, aggregate: Option<&Aggregate>) -> PointShape {
        PointShape {
            name: name.to_string(),
            value_type,
            functions: aggregate.map_or_else(Vec::new, |a| a.functions.clone()),
            ..PointShape::default()
        }
    }

    /// With its unit and Home Assistant hints.
    pub fn shown(mut self, unit: Option<&String>, hints: &EntityHints) -> PointShape {
        self.unit = unit.cloned();
        self.hints = hints.clone();
        self
    }
}

/// `batch:` of a device: one publish carries a JSON array of its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Readings per publish, at most.
    pub max_readings: Bounded<1, 10_000>,
    /// Payload bytes per publish, at most.
    pub max_bytes: ByteSize,
    /// How long the first reading of a batch may wait for the rest.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_readings: Bounded(50),
            max_bytes: ByteSize(64 << 10),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// `points[i].name` problems for point names used more than once.
pub fn duplicate_point_names<'a>(
    names: impl IntoIterator<Item = &'a Name>,
) -> Vec<(String, String)> {
    duplicate_names("points", "name", names)
}

/// Problems of a list whose names must be unique: one per repeated name,
/// at `{list}[i].{field}`, naming the first use.
pub fn duplicate_names<'a>(
    list: &str,
    field: &str,
    names: impl IntoIterator<Item = &'a Name>,
) -> Vec<(String, String)> {
    let names: Vec<&Name> = names.into_iter().collect();
    let mut found = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(first) = names[..i].iter().position(|n| n == name) {
            found.push((
                format!("{list}[{i}].{field}"),
                format!("duplicate point name `{name}`, already used by {list}[{first}]"),
            ));
        }
    }
    found
}

/// Declares the device kinds once: the enum, the list of kind names, and
/// the position-keeping check of each kind.
macro_rules! device_kinds {
    ($($kind:literal => $variant:ident($config:ty)),* $(,)?) => {
        /// One device; `kind` selects the source that owns it.
        // One value per configured device, built once: sizes don't matter.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(tag = "kind")]
        pub enum DeviceConfig {
            $(#[serde(rename = $kind)] $variant($config),)*
        }

        /// The device kinds this build knows, for error messages.
        pub const DEVICE_KINDS: &[&str] = &[$($kind),*];

        impl DeviceConfig {
            pub fn spec(&self) -> &dyn DeviceSpec {
                match self {
                    $(DeviceConfig::$variant(d) => d,)*
                }
            }

            /// Its `kind`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(DeviceConfig::$variant(_) => $kind,)*
                }
            }

            /// Type-checks one device node by its `kind`, keeping positions:
            /// the device (also when its only problems are unknown keys,
            /// else typed without the nodes that failed, whose paths come
            /// second) and the problems; `None` for an unknown kind.
            pub(super) fn from_node(
                kind: &str,
                node: &yaml::Node,
                path: &str,
            ) -> Option<(Option<DeviceConfig>, Vec<String>, Vec<yaml::Diagnostic>)> {
                let body = node.without("kind");
                match kind {
                    $($kind => {
                        let (device, pruned, found) = yaml::from_node_partial(&body, path);
                        Some((device.map(DeviceConfig::$variant), pruned, found))
                    })*
                    _ => None,
                }
            }
        }
    };
}

device_kinds! {
    "simulated" => Simulated(SimulatedDevice),
    "serial" => Serial(SerialDevice),
    "modbus" => Modbus(ModbusDevice),
    "ble" => Ble(BleDevice),
}

impl DeviceConfig {
    pub fn name(&self) -> &Name {
        self.spec().name()
    }

    /// QoS and priority of this device's readings.
    pub fn delivery(&self, default_qos: Qos) -> Delivery {
        let spec = self.spec();
        Delivery {
            qos: spec.qos().unwrap_or(default_qos),
            priority: spec.priority(),
        }
    }

    pub(super) fn problems(&self) -> Vec<(String, String)> {
        self.spec().problems()
    }

    /// The points its readings carry, with their types (see [`DeviceSpec::shapes`]).
    pub fn shapes(&self) -> Vec<PointShape> {
        self.spec().shapes()
    }
}
