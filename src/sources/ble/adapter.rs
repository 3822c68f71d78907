//! Finding the adapter, and saying in plain words why there is none: no
//! D-Bus, no BlueZ, no permission, no controller.

use btleplug::api::{Central, Manager as _};
use btleplug::platform::{Adapter, Manager};

/// Opens the adapter called `wanted` (`hci0`), or the first one. Keeps the
/// D-Bus connection in `manager` for the next attempt once it exists.
pub async fn open(
    manager: &mut Option<Manager>,
    wanted: Option<&str>,
) -> Result<(Adapter, String), String> {
    if manager.is_none() {
        *manager = Some(Manager::new().await.map_err(|e| explain(&e))?);
    }
    let Some(m) = manager.as_ref() else {
        unreachable!("set above");
    };
    let adapters = match m.adapters().await {
        Ok(a) => a,
        Err(e) => {
            let cause = explain(&e);
            if !cause.starts_with("BlueZ is not running") {
                *manager = None; // a fresh connection next time
            }
            return Err(cause);
        }
    };
    let mut names = Vec::new();
    for adapter in adapters {
        let info = adapter.adapter_info().await.map_err(|e| explain(&e))?;
        let name = info
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if wanted.is_none_or(|w| w == name) {
            return Ok((adapter, name));
        }
        names.push(name);
    }
    Err(match wanted {
        Some(w) if !names.is_empty() => format!(
            "no Bluetooth adapter {w} (BlueZ has {})",
            names.join(", ")
        ),
        Some(w) => format!("no Bluetooth adapter {w} (BlueZ lists none)"),
        None => "no Bluetooth adapter (BlueZ lists none; is the controller attached and not blocked by rfkill?)".into(),
    })
}

/// A btleplug error in the words of whoever has to fix it.
pub fn explain(e: &btleplug::Error) -> String {
    explain_text(&e.to_string())
}

fn explain_text(text: &str) -> String {
    if text.contains("ServiceUnknown") || text.contains("org.bluez was not provided") {
        "BlueZ is not running (no org.bluez on the system D-Bus; start bluetooth.service)".into()
    } else if text.contains("AccessDenied") || text.contains("not allowed") {
        format!(
            "the system D-Bus does not let this user talk to BlueZ ({text}); install fieldgate-bluez.conf in /etc/dbus-1/system.d or add the user to the bluetooth group"
        )
    } else if text.contains("Failed to connect to socket")
        || text.contains("Unable to autolaunch")
        || text.contains("DBUS_SYSTEM_BUS_ADDRESS")
        || text.contains("Address does not contain a colon")
    {
        format!("no system D-Bus to reach BlueZ through ({text})")
    } else if text.contains("NotReady") || text.contains("Resource Not Ready") {
        format!("the Bluetooth adapter is powered off or not ready ({text})")
    } else {
        format!("BlueZ: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named() {
        let no_bus = "D-Bus error: Failed to connect to socket /nonexistent: No such file or directory (org.freedesktop.DBus.Error.FileNotFound)";
        assert!(explain_text(no_bus).starts_with("no system D-Bus"));
        let no_bluez = "D-Bus error: The name org.bluez was not provided by any .service files (org.freedesktop.DBus.Error.ServiceUnknown)";
        assert!(explain_text(no_bluez).starts_with("BlueZ is not running"));
        let denied = "D-Bus error: Rejected send message (org.freedesktop.DBus.Error.AccessDenied)";
        assert!(explain_text(denied).contains("bluetooth group"));
        assert_eq!(explain_text("odd"), "BlueZ: odd");
    }
}
