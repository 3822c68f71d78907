//! Power-cycling the adapter through BlueZ (`Powered` off, then on): what
//! the scanner watchdog does when restarting discovery did not bring the
//! advertisements back. btleplug has no call for it, so this goes to BlueZ
//! directly, over a D-Bus connection of its own.

use std::time::Duration;

use dbus::blocking::Connection;
use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;

/// How long BlueZ gets for each `Powered` change.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Between off and on: the controller finishes powering down.
const OFF_FOR: Duration = Duration::from_secs(1);

/// Why a power cycle failed, in BlueZ's words.
#[derive(Debug, thiserror::Error)]
#[error("cannot power-cycle {adapter}: {cause}")]
pub struct PowerError {
    adapter: String,
    cause: String,
}

/// Turns `adapter` (`hci0`) off and on again; blocks, so it runs on the
/// blocking pool.
pub async fn cycle(adapter: &str) -> Result<(), PowerError> {
    let name = adapter.to_owned();
    let fail = |cause: String| PowerError {
        adapter: adapter.to_owned(),
        cause,
    };
    tokio::task::spawn_blocking(move || cycle_blocking(&name))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))
}

fn cycle_blocking(adapter: &str) -> Result<(), dbus::Error> {
    let connection = Connection::new_system()?;
    // BlueZ names adapters hci0, hci1, …; anything else is no object path.
    let path = dbus::Path::new(format!("/org/bluez/{adapter}"))
        .map_err(|e| dbus::Error::new_failed(&format!("no adapter path: {e}")))?;
    let proxy = connection.with_proxy("org.bluez", path, CALL_TIMEOUT);
    proxy.set("org.bluez.Adapter1", "Powered", false)?;
    std::thread::sleep(OFF_FOR);
    proxy.set("org.bluez.Adapter1", "Powered", true)
}
