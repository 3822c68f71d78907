//! The `fieldgate run` process under test, with its output in a log file
//! per start, so a test that restarts it can still show every run's log.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{kill_and_reap, poll, read_lossy, send_signal, wait_timeout};

/// The test hook that stands in for the kernel's clock sync state.
pub const CLOCK_HOOK_ENV: &str = "FIELDGATE_TEST_CLOCK_HOOK";

/// What the gateway logs once its downstream connection has subscribed.
pub const COMMANDS_READY: &str = "commands: subscribed at";

/// A running `fieldgate run --config <path>` process. Killed and reaped on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    log_path: PathBuf,
}

impl Gateway {
    /// Spawn `fieldgate run --config <config>` with `RUST_LOG=info` (unless RUST_LOG is set),
    /// stdin null, stderr and stdout appended to a fresh `fieldgate-<n>.log` in `log_dir`
    /// (n = 1, 2, ... so restarts in the same dir keep earlier logs).
    pub fn start(config: &Path, log_dir: &Path) -> Gateway {
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        Gateway::start_logging(config, log_dir, &level)
    }

    /// As `start`, with `RUST_LOG` set to `filter`.
    pub fn start_logging(config: &Path, log_dir: &Path, filter: &str) -> Gateway {
        Gateway::start_with_env(config, log_dir, filter, &[])
    }

    /// As `start_logging`, with extra environment variables for the
    /// gateway process only (e.g. `DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn start_with_env(
        config: &Path,
        log_dir: &Path,
        filter: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        fs::create_dir_all(log_dir).expect("create gateway log dir");
        let (log_path, log_file) = new_log_file(log_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
        cmd.args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log file"))
            .stderr(log_file);
        cmd.env("RUST_LOG", filter);
        // The host's clock may or may not be NTP-synced; unless a test
        // says otherwise, the gateway believes it is, so that payloads do
        // not depend on the machine (see tests/clock.rs).
        if !env.iter().any(|(k, _)| *k == CLOCK_HOOK_ENV) {
            let hook = log_dir.join("clock-synced");
            fs::write(&hook, "synced").expect("write clock hook");
            cmd.env(CLOCK_HOOK_ENV, hook);
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_fieldgate")));
        Gateway { child, log_path }
    }

    /// SIGTERM (via `kill -TERM`) and wait up to `timeout` for exit. If it does not exit in
    /// time it is SIGKILLed and this panics with its log. Returns at once if already exited.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("try_wait fieldgate") {
            return status;
        }
        send_signal(self.child.id(), "TERM");
        match wait_timeout(&mut self.child, timeout) {
            Some(status) => status,
            None => {
                kill_and_reap(&mut self.child);
                panic!(
                    "fieldgate did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// SIGHUP: reload the configuration.
    pub fn sighup(&self) {
        send_signal(self.child.id(), "HUP");
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Everything the process wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Path of this process's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Wait until the log contains `needle`, polling every 50 ms. Returns false on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        poll(timeout, || self.log().contains(needle))
    }

    /// Wait until the downstream connection has subscribed to commands and
    /// configurations: before the broker first holds that session, what is
    /// published to them reaches nobody. Returns false on timeout.
    pub fn wait_for_commands(&self, timeout: Duration) -> bool {
        self.wait_for_log(COMMANDS_READY, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Exit status if the process has exited (reaping it), without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait fieldgate")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Create `fieldgate-<n>.log` in `dir` with the first free n (atomic via create_new).
fn new_log_file(dir: &Path) -> (PathBuf, File) {
    for n in 1.. {
        let path = dir.join(format!("fieldgate-{n}.log"));
        match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(file) => return (path, file),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", path.display()),
        }
    }
    unreachable!()
}
