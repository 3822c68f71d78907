//! What a remote configuration may change. Whoever can publish on
//! `P/config/set` must not gain the power to drive actuators: the local
//! file is the authority on what commands may write (and where a write
//! lands) and on the endpoints the gateway reaches devices at. A remote
//! document is checked against it here, after it passed the checks of the
//! local file, and is refused whole if it creates or widens a write
//! permission or names a new endpoint, unless the local file's
//! `remote_config:` opts in.

mod endpoint;
#[cfg(test)]
mod tests;

pub use endpoint::Endpoint;

use std::collections::HashSet;

use serde::Deserialize;

use super::ble::{BleDevice, Characteristic};
use super::modbus::{ModbusDevice, ModbusPoint};
use super::serial::SerialDevice;
use super::yaml::{Diagnostic, Node};
use super::{Config, DeviceConfig};

/// `remote_config:` of the local file; a remote document may not set it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteTrust {
    /// Remote documents may declare writable points, ranges, write
    /// templates and writable characteristics of their own.
    pub allow_writes: bool,
    /// Endpoints remote documents may use besides those of the local
    /// file's devices.
    pub allow_endpoints: Vec<Endpoint>,
}

const OPT_IN_WRITES: &str = "a remote configuration may not create or widen write permissions (the local file's `remote_config.allow_writes` allows it)";

/// The problems of the `remote` devices against the local file, located
/// in `root`, the remote document.
pub(super) fn check(local: &Config, remote: &[DeviceConfig], root: &Node) -> Vec<Diagnostic> {
    let trust = &local.remote_config;
    let mut known: HashSet<Endpoint> = local
        .devices
        .iter()
        .flat_map(endpoints)
        .map(|(_, e)| e)
        .collect();
    known.extend(trust.allow_endpoints.iter().cloned());
    let mut found = Vec::new();
    for (i, device) in remote.iter().enumerate() {
        for (key, endpoint) in endpoints(device) {
            if !known.contains(&endpoint) {
                found.push((
                    format!("devices[{i}].{key}"),
                    format!(
                        "`{endpoint}` is not an endpoint of the local file (the local file's `remote_config.allow_endpoints` can list it)"
                    ),
                ));
            }
        }
        if !trust.allow_writes {
            let mine = local.devices.iter().find(|d| d.name() == device.name());
            for (key, message) in writes(device, mine) {
                found.push((format!("devices[{i}].{key}"), message));
            }
        }
    }
    found
        .into_iter()
        .map(|(path, message)| Diagnostic {
            mark: Some(root.locate(&path).mark),
            path,
            message,
            variable: None,
        })
        .collect()
}

/// Where a device is reached, with the key that says so.
fn endpoints(device: &DeviceConfig) -> Vec<(&'static str, Endpoint)> {
    let mut found = Vec::new();
    match device {
        DeviceConfig::Modbus(d) => {
            if let Some(tcp) = &d.tcp {
                found.push(("tcp", Endpoint::tcp(&tcp.host, tcp.port)));
            }
            if let Some(rtu) = &d.rtu {
                found.push(("rtu.port", Endpoint::Path(rtu.port.clone())));
            }
        }
        DeviceConfig::Serial(d) => found.push(("port", Endpoint::Path(d.port.clone()))),
        DeviceConfig::Ble(d) => {
            if let Some(mac) = d.address {
                found.push(("address", Endpoint::Ble(mac)));
            }
            if let Some(name) = &d.local_name {
                found.push(("local_name", Endpoint::BleName(name.clone())));
            }
        }
        DeviceConfig::Simulated(_) => {}
    }
    found
}

/// Write permissions of a remote device that its local namesake (`mine`)
/// does not grant, as (key below the device, message).
fn writes(remote: &DeviceConfig, mine: Option<&DeviceConfig>) -> Vec<(String, String)> {
    match remote {
        DeviceConfig::Modbus(r) => {
            let mine = match mine {
                Some(DeviceConfig::Modbus(l)) => Some(l),
                _ => None,
            };
            modbus_writes(r, mine)
        }
        DeviceConfig::Serial(r) => {
            let mine = match mine {
                Some(DeviceConfig::Serial(l)) => Some(l),
                _ => None,
            };
            serial_writes(r, mine)
        }
        DeviceConfig::Ble(r) => {
            let mine = match mine {
                Some(DeviceConfig::Ble(l)) => Some(l),
                _ => None,
            };
            ble_writes(r, mine)
        }
        DeviceConfig::Simulated(_) => Vec::new(),
    }
}

fn not_writable(device: &str, point: &str) -> String {
    format!("`{device}.{point}` is not writable in the local file: {OPT_IN_WRITES}")
}

fn must_stay(device: &str, point: &str, key: &str) -> String {
    format!(
        "`{device}.{point}` is writable, so its `{key}` must stay as in the local file: {OPT_IN_WRITES}"
    )
}

/// A device with writable points keeps the settings that decide which
/// device a write reaches.
fn device_must_stay(device: &str, key: &str) -> String {
    format!(
        "`{device}` has writable points, so its `{key}` must stay as in the local file: {OPT_IN_WRITES}"
    )
}

fn modbus_writes(r: &ModbusDevice, mine: Option<&ModbusDevice>) -> Vec<(String, String)> {
    let device = r.name.as_str();
    let mut found = Vec::new();
    let mut granted = false;
    for (j, rp) in r.points.iter().enumerate().filter(|(_, p)| p.writable) {
        let point = rp.name.as_str();
        let lp = mine.and_then(|l| l.points.iter().find(|p| p.name == rp.name && p.writable));
        let Some(lp) = lp else {
            found.push((format!("points[{j}].writable"), not_writable(device, point)));
            continue;
        };
        granted = true;
        for key in modbus_point_differences(lp, rp) {
            found.push((format!("points[{j}].{key}"), must_stay(device, point, key)));
        }
        for (key, message) in widened(lp, rp) {
            let message = format!("`{device}.{point}`: {message}: {OPT_IN_WRITES}");
            found.push((format!("points[{j}].{key}"), message));
        }
    }
    let Some(l) = mine.filter(|_| granted) else {
        return found;
    };
    let rtu_port = |d: &ModbusDevice| d.rtu.as_ref().map(|rtu| rtu.port.clone());
    let tcp = |d: &ModbusDevice| d.tcp.as_ref().map(|t| Endpoint::tcp(&t.host, t.port));
    let moved = [
        ("tcp", tcp(l) != tcp(r)),
        ("rtu.port", rtu_port(l) != rtu_port(r)),
        ("unit", l.unit != r.unit),
        ("address_base", l.address_base != r.address_base),
    ];
    for (key, _) in moved.into_iter().filter(|(_, differs)| *differs) {
        found.push((key.to_owned(), device_must_stay(device, key)));
    }
    found
}

/// The keys of a writable point that decide what a write sets, and how,
/// where `remote` differs from `local`.
fn modbus_point_differences(local: &ModbusPoint, remote: &ModbusPoint) -> Vec<&'static str> {
    let scale = |p: &ModbusPoint| p.scale.unwrap_or(1.0);
    let offset = |p: &ModbusPoint| p.offset.unwrap_or(0.0);
    [
        ("register", local.register != remote.register),
        ("address", local.address != remote.address),
        ("type", local.value_type() != remote.value_type()),
        ("length", local.length != remote.length),
        (
            "word_order",
            local.word_order.unwrap_or_default() != remote.word_order.unwrap_or_default(),
        ),
        (
            "byte_order",
            local.byte_order.unwrap_or_default() != remote.byte_order.unwrap_or_default(),
        ),
        ("bit", local.bit != remote.bit),
        ("scale", scale(local) != scale(remote)),
        ("offset", offset(local) != offset(remote)),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(key, _)| key)
    .collect()
}

/// `min`/`max` of `remote` outside those of `local`; a narrower range is
/// fine.
fn widened(local: &ModbusPoint, remote: &ModbusPoint) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    match (local.min, remote.min) {
        (Some(l), Some(r)) if r < l => {
            found.push(("min", format!("min {r} is below {l}, the local min")))
        }
        (Some(l), None) => found.push(("min", format!("no min, the local min is {l}"))),
        _ => {}
    }
    match (local.max, remote.max) {
        (Some(l), Some(r)) if r > l => {
            found.push(("max", format!("max {r} is above {l}, the local max")))
        }
        (Some(l), None) => found.push(("max", format!("no max, the local max is {l}"))),
        _ => {}
    }
    found
}

fn serial_writes(r: &SerialDevice, mine: Option<&SerialDevice>) -> Vec<(String, String)> {
    let device = r.name.as_str();
    let mut found = Vec::new();
    let mut granted = false;
    for (point, template) in &r.write {
        let key = format!("write.{point}");
        match mine.and_then(|l| l.write.get(point)) {
            None => found.push((key, not_writable(device, point.as_str()))),
            Some(local) => {
                granted = true;
                if local != template {
                    found.push((key, must_stay(device, point.as_str(), "write template")));
                }
            }
        }
    }
    if let Some(l) = mine
        && granted
        && l.port != r.port
    {
        found.push(("port".into(), device_must_stay(device, "port")));
    }
    found
}

fn ble_writes(r: &BleDevice, mine: Option<&BleDevice>) -> Vec<(String, String)> {
    let device = r.name.as_str();
    let mut found = Vec::new();
    let mut granted = false;
    for (j, rc) in r
        .characteristics
        .iter()
        .enumerate()
        .filter(|(_, c)| c.writable)
    {
        let point = rc.point.as_str();
        let lc = mine.and_then(|l| {
            l.characteristics
                .iter()
                .find(|c| c.point == rc.point && c.writable)
        });
        let Some(lc) = lc else {
            let key = format!("characteristics[{j}].writable");
            found.push((key, not_writable(device, point)));
            continue;
        };
        granted = true;
        for key in characteristic_differences(lc, rc) {
            let message = must_stay(device, point, key);
            found.push((format!("characteristics[{j}].{key}"), message));
        }
    }
    if let Some(l) = mine
        && granted
    {
        if l.address != r.address {
            found.push(("address".into(), device_must_stay(device, "address")));
        }
        if l.local_name != r.local_name {
            found.push(("local_name".into(), device_must_stay(device, "local_name")));
        }
    }
    found
}

/// What decides which characteristic a write reaches and the bytes it
/// sends; `mode` (notify or read) only changes how it is read.
fn characteristic_differences(
    local: &Characteristic,
    remote: &Characteristic,
) -> Vec<&'static str> {
    [
        ("uuid", local.uuid != remote.uuid),
        ("service", local.service != remote.service),
        ("type", local.value_type != remote.value_type),
        ("endian", local.endian != remote.endian),
        ("skip", local.skip != remote.skip),
        ("scale", local.scale != remote.scale),
        ("offset", local.offset != remote.offset),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(key, _)| key)
    .collect()
}
