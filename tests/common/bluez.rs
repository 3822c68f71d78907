//! A mock BlueZ for BLE tests without a radio: python-dbusmock's `bluez5`
//! template, driven by `tests/ble/driver.py`, on a private dbus-daemon.
//! `DBUS_SYSTEM_BUS_ADDRESS` is set for the spawned processes only. Needs
//! `dbus-daemon` and `python3-dbusmock` (installed by scripts/test.sh).

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";

/// A private D-Bus with (optionally) a mock BlueZ and its driver on it.
pub struct MockBluez {
    pub address: String,
    dir: tempfile::TempDir,
    /// Killed in this order: driver, mock, bus.
    children: Vec<Child>,
}

impl MockBluez {
    /// The bus, the `bluez5` mock and the driver, once it has added its
    /// adapter and devices.
    pub fn start() -> MockBluez {
        MockBluez::start_with(&[])
    }

    /// As [`start`](Self::start), with environment variables for the driver
    /// (`FIELDGATE_TEST_…`, see driver.py).
    pub fn start_with(driver_env: &[(&str, &str)]) -> MockBluez {
        let mut bus = MockBluez::bus_only();
        bus.add_bluez_with(driver_env);
        bus
    }

    /// Starts the `bluez5` mock and the driver on this bus and waits until
    /// the driver has added its adapter and devices.
    pub fn add_bluez(&mut self) {
        self.add_bluez_with(&[]);
    }

    pub fn add_bluez_with(&mut self, driver_env: &[(&str, &str)]) {
        let bus = self;
        let mock_log = bus.dir.path().join("mock.log");
        let mock: [&std::ffi::OsStr; 7] = [
            "-m".as_ref(),
            "dbusmock".as_ref(),
            "--system".as_ref(),
            "--template".as_ref(),
            "bluez5".as_ref(),
            "-l".as_ref(),
            mock_log.as_os_str(),
        ];
        bus.python(&mock, "mock.stderr", &[]);
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ble/driver.py");
        bus.python(&[driver.as_os_str()], "driver.log", driver_env);
        assert!(
            bus.wait_for_driver("ready", Duration::from_secs(30)),
            "the mock BlueZ did not come up\n{}",
            bus.logs()
        );
    }

    /// Starts `/usr/bin/python3 args` on this bus, its output in `log`.
    pub fn python(&mut self, args: &[&std::ffi::OsStr], log: &str, env: &[(&str, &str)]) {
        let log = File::create(self.dir.path().join(log)).expect("create a log file");
        let child = Command::new(PYTHON)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {PYTHON} {args:?} (apt-get install python3-dbusmock): {e}")
            });
        // Killed before the bus.
        self.children.insert(0, child);
    }

    /// A private system bus with nothing on it (no BlueZ).
    pub fn bus_only() -> MockBluez {
        let dir = tempfile::Builder::new()
            .prefix("fieldgate-dbus-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("bus.sock");
        let template = include_str!("../ble/bus.conf");
        let conf = dir.path().join("bus.conf");
        fs::write(
            &conf,
            template.replace("@SOCKET@", &socket.display().to_string()),
        )
        .expect("write bus.conf");
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (apt-get install dbus)");
        let mut line = String::new();
        BufReader::new(daemon.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the bus address");
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon said {line:?}");
        MockBluez {
            address,
            dir,
            children: vec![daemon],
        }
    }

    pub fn env(&self) -> [(&str, &str); 1] {
        [("DBUS_SYSTEM_BUS_ADDRESS", self.address.as_str())]
    }

    pub fn driver_log_path(&self) -> PathBuf {
        self.dir.path().join("driver.log")
    }

    pub fn driver_log(&self) -> String {
        fs::read_to_string(self.driver_log_path()).unwrap_or_default()
    }

    pub fn wait_for_driver(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.driver_log().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Every call the mock received (python-dbusmock's `-l` log).
    pub fn mock_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mock.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mock = fs::read_to_string(self.dir.path().join("mock.stderr")).unwrap_or_default();
        format!("--- driver ---\n{}--- mock ---\n{mock}", self.driver_log())
    }
}

impl Drop for MockBluez {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
