//! A private mosquitto per test, on a free port and with its own persistence
//! directory, so tests run in parallel and a restart keeps the sessions.
//! The limits in its config are not tuning: with mosquitto's defaults it
//! silently drops QoS 1 messages to a subscriber under a fast publisher.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{STARTUP_TIMEOUT, free_port, kill_and_reap, read_lossy, send_signal, wait_timeout};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long a SIGTERMed broker may take to save its persistence file and exit.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A private mosquitto broker. Killed and reaped on drop; its temp dir is removed afterwards.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    /// Holds `mosquitto.conf`, `mosquitto.log`, `mosquitto.stderr` and `data/` (persistence).
    /// Declared last so that it is removed after the child is dead.
    dir: tempfile::TempDir,
    /// Lines before the generated listener (global options such as
    /// `per_listener_settings true`).
    prelude: String,
    extra_config: String,
}

impl Broker {
    /// Start a private mosquitto on a free ephemeral port, waiting until it accepts
    /// connections (panics with the broker log after ~10 s).
    pub fn start() -> Broker {
        Self::start_with_config("")
    }

    /// Like [`Broker::start`], with `extra` appended verbatim to the generated config
    /// (e.g. `acl_file ...`). The generated part already has the listener, `allow_anonymous
    /// true`, `user root`, the limits and persistence; do not repeat those.
    pub fn start_with_config(extra: &str) -> Broker {
        Self::start_with("", extra)
    }

    /// Like [`Broker::start_with_config`], with `prelude` written before the
    /// generated listener: global options such as `per_listener_settings true`,
    /// after which `extra` can open more listeners with their own security.
    pub fn start_with(prelude: &str, extra: &str) -> Broker {
        // Between closing our probe listener and mosquitto binding, another process may take the
        // port: retry with a new port if mosquitto reports that the address is in use.
        let mut last_err = String::new();
        for _ in 0..5 {
            let dir = new_broker_dir();
            let mut broker = Broker::unstarted(free_port(), dir, extra);
            broker.prelude = prelude.to_owned();
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(e) if e.contains("Address already in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("mosquitto could not bind a free port after 5 attempts:\n{last_err}");
    }

    /// Start on a given port with a given directory (for its config, log and persistence).
    /// A directory already used by a stopped broker keeps its persistence file, so this is
    /// also a way to bring back a broker whose `Broker` value was consumed.
    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Broker {
        let mut broker = Broker::unstarted(port, dir, "");
        if let Err(e) = broker.spawn_and_wait() {
            panic!("{e}");
        }
        broker
    }

    fn unstarted(port: u16, dir: tempfile::TempDir, extra: &str) -> Broker {
        Broker {
            port,
            child: None,
            dir,
            prelude: String::new(),
            extra_config: extra.to_owned(),
        }
    }

    /// SIGTERM the broker (so it saves its persistence file) and wait for it to exit.
    /// Panics (after SIGKILL) with the log if it does not exit within 10 s. No-op if stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), "TERM");
        if wait_timeout(&mut child, BROKER_STOP_TIMEOUT).is_none() {
            kill_and_reap(&mut child);
            panic!(
                "mosquitto on port {} did not exit within {:?} of SIGTERM\n{}",
                self.port,
                BROKER_STOP_TIMEOUT,
                self.log()
            );
        }
    }

    /// SIGKILL the broker (nothing saved) and reap it. No-op if stopped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Start again on the same port with the same config and persistence directory, and wait
    /// until it accepts connections. Stops the broker first if it is still running.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("restart: {e}");
        }
    }

    /// `mqtt://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The broker's temp directory (config, logs, `data/` persistence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the generated `mosquitto.conf` (it appears on mosquitto's command line).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// Broker log file plus anything mosquitto wrote to stderr (config errors etc.).
    pub fn log(&self) -> String {
        let log = read_lossy(&self.dir.path().join("mosquitto.log"));
        let stderr = read_lossy(&self.dir.path().join("mosquitto.stderr"));
        format!("--- mosquitto.log ---\n{log}--- mosquitto stderr ---\n{stderr}")
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir.path();
        let data = dir.join("data");
        fs::create_dir_all(&data).expect("create mosquitto data dir");
        let config = format!(
            "{prelude}\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             user root\n\
             max_inflight_messages 0\n\
             max_queued_messages 1000000\n\
             persistence true\n\
             persistence_location {data}\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             log_timestamp_format %H:%M:%S\n\
             {extra}\n",
            prelude = self.prelude,
            port = self.port,
            data = data.display(),
            log = dir.join("mosquitto.log").display(),
            extra = self.extra_config,
        );
        let path = self.config_path();
        fs::write(&path, config).expect("write mosquitto.conf");
        path
    }

    /// Spawn mosquitto and wait until it is running and accepts TCP connections.
    /// On failure the child is killed and an error with the logs is returned.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "broker already running");
        let config = self.write_config();
        let log_path = self.dir.path().join("mosquitto.log");
        // Lines logged before this start do not count as "running".
        let log_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0) as usize;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.stderr"))
            .expect("open mosquitto.stderr");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone stderr file"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {MOSQUITTO}: {e}"));
        self.child = Some(child);

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait mosquitto") {
                self.child = None;
                return Err(format!(
                    "mosquitto on port {} exited during startup ({status})\n{}",
                    self.port,
                    self.log()
                ));
            }
            // mosquitto logs "mosquitto version X running" after it opened its listeners, so a
            // successful connect then really reaches our broker, not another owner of the port.
            let log = read_lossy(&log_path);
            let running = log
                .get(log_offset..)
                .is_some_and(|l| l.contains(" running"));
            if running && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut child = self.child.take().expect("child");
                kill_and_reap(&mut child);
                return Err(format!(
                    "mosquitto on port {} did not accept connections within {:?}\n{}",
                    self.port,
                    STARTUP_TIMEOUT,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

fn new_broker_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fieldgate-mosquitto-")
        .tempdir()
        .expect("create broker temp dir")
}

/// Publishes `payload` to `topic` `count` times, at QoS 0, in one
/// connection and as fast as the broker takes it (`mosquitto_pub -l`).
pub fn publish_many(port: u16, topic: &str, payload: &str, count: usize) {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-l",
            "-t",
            topic,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    let lines = format!("{payload}\n").repeat(count);
    let mut stdin = child.stdin.take().expect("mosquitto_pub's stdin");
    stdin
        .write_all(lines.as_bytes())
        .expect("write to mosquitto_pub");
    drop(stdin);
    assert!(
        child.wait().expect("wait for mosquitto_pub").success(),
        "mosquitto_pub failed"
    );
}

/// Publishes `payload` to `topic` at QoS 1 with mosquitto_pub.
pub fn publish(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}
