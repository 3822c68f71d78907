//! Files and serial ports the configuration names, looked for on this
//! machine. A missing one is a warning, not an error: `check` may run
//! before the secrets are deployed, or on another machine, and a USB
//! adapter may be unplugged now and plugged in later (the gateway waits
//! for it).

use std::path::Path;

use super::super::{Config, DeviceConfig, MACHINE_ID};
use super::Problem;

/// A warning for each file or port that is not there, as unplaced
/// problems (path, message).
pub(super) fn missing(config: &Config) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut look = |path: String, file: &Path, what: &str| {
        if is_missing(file) {
            found.push(Problem {
                mark: None,
                path,
                message: format!("{} does not exist: {what}", file.display()),
                variable: None,
            });
        }
    };
    let mqtt = &config.mqtt;
    let login = "the gateway cannot log in to the broker until it does";
    if let Some(file) = &mqtt.password_file {
        look("mqtt.password_file".into(), file, login);
    }
    if let Some(file) = &mqtt.token_file {
        look("mqtt.token_file".into(), file, login);
    }
    if mqtt
        .client_id
        .as_deref()
        .is_some_and(|id| id.contains(MACHINE_ID))
    {
        let what = "the client id cannot be made until it does";
        look("mqtt.machine_id_file".into(), &mqtt.machine_id_file, what);
    }
    if let Some(tls) = &mqtt.tls {
        let tls_files = [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ];
        for (key, file) in tls_files {
            if let Some(file) = file {
                let what = "the gateway cannot connect to the broker until it does";
                look(format!("mqtt.tls.{key}"), file, what);
            }
        }
    }
    let unplugged = "the device is reported as a problem until the port appears";
    for (i, device) in config.devices.iter().enumerate() {
        match device {
            DeviceConfig::Serial(d) => {
                look(format!("devices[{i}].port"), Path::new(&d.port), unplugged)
            }
            DeviceConfig::Modbus(d) => {
                if let Some(rtu) = &d.rtu {
                    let port = Path::new(&rtu.port);
                    look(format!("devices[{i}].rtu.port"), port, unplugged);
                }
            }
            DeviceConfig::Simulated(_) | DeviceConfig::Ble(_) => {}
        }
    }
    found
}

/// Only "not found" counts: a file this user may not look at (the
/// gateway's own secrets, checked by an administrator) is not reported.
fn is_missing(file: &Path) -> bool {
    // An empty path is an error of its own, reported by the checks.
    if file.as_os_str().is_empty() {
        return false;
    }
    matches!(std::fs::metadata(file), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}
