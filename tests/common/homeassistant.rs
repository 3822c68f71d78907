//! A real Home Assistant core (2025.4.4), an MQTT client of a test's broker,
//! from the virtualenv `scripts/test.sh` makes (`target/ha-venv`, or the
//! path in `FIELDGATE_HA_VENV`). `tests/homeassistant/hass.py` prepares its
//! configuration directory and talks to its APIs; this side starts `hass`
//! in a process group of its own and kills the whole group on drop.
//!
//! Each instance has its own temp config directory and a free HTTP port,
//! is onboarded (an owner and a long-lived token) and has the MQTT
//! integration with discovery on, prefix `homeassistant`.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, read_lossy, wait_timeout};

/// How long `hass` may take from spawn until onboarded with MQTT working
/// (about 5 s on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERMed `hass` may take to shut down.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `hass.py` query (states, registry, a service call) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of `hass`'s output shown when something fails.
const LOG_TAIL_LINES: usize = 150;
/// What Home Assistant logs when it could not bind its HTTP port.
const PORT_TAKEN: &str = "Failed to create HTTP server";

pub struct HomeAssistant {
    /// Port of the HTTP API (REST and websocket) on 127.0.0.1.
    pub port: u16,
    /// Port of the broker it is connected to on 127.0.0.1.
    pub mqtt_port: u16,
    child: Option<Child>,
    /// The configuration directory (`configuration.yaml`, `.storage/`,
    /// `token`) and `hass.out`. Declared last: removed after `hass` is dead.
    dir: tempfile::TempDir,
}

/// The virtualenv that has Home Assistant.
fn venv() -> PathBuf {
    match std::env::var_os("FIELDGATE_HA_VENV") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ha-venv"),
    }
}

fn python() -> PathBuf {
    venv().join("bin/python")
}

fn driver() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/homeassistant/hass.py")
}

/// Sends `signal` to the process group `pgid` with the `kill` command.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reads a child's pipe to the end on a thread of its own, so that a large
/// output cannot block the child while we wait for it with a timeout.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A running `hass.py` with its output collected in the background.
struct Driver {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

impl Driver {
    fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Driver {
        let mut child = Command::new(python())
            .arg(driver())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", python().display(), driver().display()));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Driver {
            child,
            stdout,
            stderr,
        }
    }

    /// Exit status, stdout and stderr, once it has exited.
    fn finish(mut self, status: ExitStatus) -> (ExitStatus, String, String) {
        let _ = self.child.wait();
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        (status, out, err)
    }

    /// Kills it; its stderr.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap_or_default()
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl HomeAssistant {
    /// A Home Assistant connected to the broker on 127.0.0.1:`mqtt_port`,
    /// onboarded, running, and with a message it published to that broker
    /// come back to it. Panics with its log when it does not get there
    /// within two minutes.
    pub fn start(mqtt_port: u16) -> HomeAssistant {
        assert!(
            python().exists(),
            "{} is missing: scripts/test.sh installs Home Assistant (or set FIELDGATE_HA_VENV)",
            python().display()
        );
        let mut last = String::new();
        // Between free_port() and hass binding it, another process may take the port.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("fieldgate-hass-")
                .tempdir()
                .expect("Home Assistant temp dir");
            let mut ha = HomeAssistant {
                port: free_port(),
                mqtt_port,
                child: None,
                dir,
            };
            ha.driver(&["prepare".into(), ha.config_arg(), ha.port.to_string()]);
            match ha.spawn_and_onboard() {
                Ok(()) => return ha,
                Err(e) if e.contains(PORT_TAKEN) => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("Home Assistant could not bind a free port after 3 attempts:\n{last}");
    }

    /// SIGTERM, then SIGKILL to its process group after 30 s. No-op if stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            signal_group(pid, "TERM");
            if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                signal_group(pid, "KILL");
                let _ = child.wait();
            }
        }
    }

    /// Stop and start again with the same configuration directory, port and
    /// broker; waits as [`HomeAssistant::start`] does.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_onboard() {
            panic!("Home Assistant restart: {e}");
        }
    }

    /// Whether `hass` is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The configuration directory.
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The owner's long-lived access token (Bearer token of the REST and websocket APIs).
    pub fn token(&self) -> String {
        read_lossy(&self.dir.path().join("token")).trim().to_owned()
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything `hass` wrote to stdout and stderr (its log, warnings and
    /// above, and debug lines of MQTT discovery).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("hass.out"))
    }

    /// All states (`GET /api/states`): an array of `{entity_id, state, attributes, ...}`.
    pub fn states(&self) -> Value {
        self.query(&["states"])
    }

    /// The state object of `entity_id`, if it has one.
    pub fn state(&self, entity_id: &str) -> Option<Value> {
        self.states()
            .as_array()
            .expect("states is an array")
            .iter()
            .find(|s| s["entity_id"] == entity_id)
            .cloned()
    }

    /// `{"devices": [...], "entities": [...]}`: the lists of the device and
    /// entity registries (websocket `config/device_registry/list`,
    /// `config/entity_registry/list`).
    pub fn registry(&self) -> Value {
        self.query(&["registry"])
    }

    /// The entity id given to the entity with `unique_id` (any platform).
    pub fn entity_id(&self, unique_id: &str) -> Option<String> {
        let registry = self.registry();
        let entities = registry["entities"]
            .as_array()
            .expect("entities is an array");
        entities
            .iter()
            .find(|e| e["unique_id"] == unique_id)
            .and_then(|e| e["entity_id"].as_str())
            .map(str::to_owned)
    }

    /// The device registry entry of the MQTT device with identifier `id`
    /// (an entry of the discovery payload's `dev.ids`).
    pub fn device(&self, id: &str) -> Option<Value> {
        let registry = self.registry();
        let devices = registry["devices"].as_array().expect("devices is an array");
        devices
            .iter()
            .find(|d| {
                d["identifiers"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i[0] == "mqtt" && i[1] == id))
            })
            .cloned()
    }

    /// Calls a service (`POST /api/services/<domain>/<service>` with `data`);
    /// panics unless the answer is 2xx. The body: the states that changed.
    pub fn call(&self, domain: &str, service: &str, data: Value) -> Value {
        let (status, body) = self.try_call(domain, service, data);
        assert!(
            (200..300).contains(&status),
            "{domain}.{service}: HTTP {status}: {body}"
        );
        body
    }

    /// Like [`HomeAssistant::call`], returning the HTTP status and body
    /// (JSON, or a JSON string for a text body) whatever they are.
    pub fn try_call(&self, domain: &str, service: &str, data: Value) -> (u16, Value) {
        let reply = self.query(&["call", domain, service, &data.to_string()]);
        let status = reply["status"].as_u64().expect("status") as u16;
        (status, reply["body"].clone())
    }

    /// One websocket command (`{"type": ..., ...}` without `id`); its
    /// result. Panics when Home Assistant answers with an error.
    pub fn ws(&self, command: Value) -> Value {
        self.query(&["ws", &command.to_string()])
    }

    /// Checks `pred` every 250 ms until it holds (true) or `timeout` has
    /// passed (false). Each check may query Home Assistant (a few 100 ms each).
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&HomeAssistant) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn config_arg(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Runs `hass.py <command> CONFIG_DIR HTTP_PORT <args>`; its stdout as JSON.
    fn query(&self, args: &[&str]) -> Value {
        let mut all = vec![args[0].to_owned(), self.config_arg(), self.port.to_string()];
        all.extend(args[1..].iter().map(|a| (*a).to_owned()));
        let out = self.driver(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("hass.py {}: not JSON ({e}): {out}", args[0]))
    }

    /// Runs `hass.py` with `args` and returns its stdout; panics with its
    /// stderr and the tail of Home Assistant's log when it fails or hangs.
    fn driver(&self, args: &[String]) -> String {
        let mut driver = Driver::spawn(args);
        match wait_timeout(&mut driver.child, QUERY_TIMEOUT) {
            Some(status) => {
                let (status, out, err) = driver.finish(status);
                if !status.success() {
                    panic!(
                        "hass.py {} failed ({status}):\n{err}\n--- Home Assistant log (tail) ---\n{}",
                        args[0],
                        tail(&self.log(), LOG_TAIL_LINES)
                    );
                }
                out
            }
            None => {
                let err = driver.kill();
                panic!(
                    "hass.py {} did not finish within {QUERY_TIMEOUT:?}:\n{err}\n--- Home Assistant log (tail) ---\n{}",
                    args[0],
                    tail(&self.log(), LOG_TAIL_LINES)
                );
            }
        }
    }

    /// Spawns `hass` and runs `hass.py onboard` until it is done; on
    /// failure `hass` is killed and the error carries its log.
    fn spawn_and_onboard(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "Home Assistant already running");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hass.out"))
            .expect("open hass.out");
        let log_offset = fs::metadata(self.dir.path().join("hass.out"))
            .map(|m| m.len())
            .unwrap_or(0) as usize;
        let child = Command::new(python())
            .args(["-m", "homeassistant", "--skip-pip", "--log-no-color", "-c"])
            .arg(self.dir.path())
            // Reads the byte-compiled venv either way; may write what is missing.
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone hass.out"))
            .stderr(out)
            .spawn()
            .map_err(|e| format!("spawn {} -m homeassistant: {e}", python().display()))?;
        self.child = Some(child);

        let timeout_s = START_TIMEOUT.as_secs().to_string();
        let mut onboard = Driver::spawn(&[
            "onboard".to_owned(),
            self.config_arg(),
            self.port.to_string(),
            self.mqtt_port.to_string(),
            timeout_s,
        ]);
        // hass.py gives up by itself at START_TIMEOUT; this is the backstop.
        let deadline = Instant::now() + START_TIMEOUT + Duration::from_secs(10);
        let failure = loop {
            let log = self.log();
            let new = log.get(log_offset..).unwrap_or_default();
            if new.contains(PORT_TAKEN) {
                break format!("{PORT_TAKEN}: port {}", self.port);
            }
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                break format!("hass exited during start-up ({status})");
            }
            if let Some(status) = onboard.child.try_wait().expect("try_wait hass.py") {
                let (status, _, err) = onboard.finish(status);
                if status.success() {
                    return Ok(());
                }
                let failure = format!("hass.py onboard failed ({status}):\n{err}");
                self.kill_all();
                return Err(self.failure(&failure, log_offset));
            }
            if Instant::now() >= deadline {
                break format!("Home Assistant was not ready within {START_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(100));
        };
        let err = onboard.kill();
        self.kill_all();
        Err(self.failure(&format!("{failure}\n--- hass.py ---\n{err}"), log_offset))
    }

    fn failure(&self, what: &str, log_offset: usize) -> String {
        let log = self.log();
        format!(
            "Home Assistant on port {} (broker port {}, config {}): {what}\n--- Home Assistant log (tail) ---\n{}",
            self.port,
            self.mqtt_port,
            self.dir.path().display(),
            tail(log.get(log_offset..).unwrap_or(&log), LOG_TAIL_LINES)
        )
    }

    /// SIGKILL to the whole process group, and reap. No-op if stopped.
    fn kill_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
        }
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Publishes `payload` retained at QoS 1 with mosquitto_pub; an empty
/// payload clears the retained message (and, on a discovery topic, removes
/// what it configured).
pub fn publish_retained(port: u16, topic: &str, payload: &str) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-r",
        "-t",
        topic,
    ]);
    if payload.is_empty() {
        cmd.arg("-n");
    } else {
        cmd.args(["-m", payload]);
    }
    let status = cmd.status().expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub -r to {topic} failed");
}
