//! Shared support code for `fieldgate` integration tests.
//!
//! * [`Broker`]: a private mosquitto on a free ephemeral port, with persistence in its own
//!   temp dir, configured so that it does not drop QoS 1 messages under load.
//! * [`Subscriber`]: a persistent-session (clean_session = false) rumqttc subscriber running
//!   on a small tokio runtime in a background thread, collecting every PUBLISH it receives.
//! * [`Gateway`]: a running `fieldgate run --config <path>` process with its output in a log file.
//!
//! All helpers are synchronous and blocking, for plain `#[test]` functions. No fixed ports.
//! Signals are sent with the `kill` command (no libc/nix dependency).
//!
//! This file is compiled into several test binaries and not every item is used by each.
#![allow(dead_code)]

pub mod modbus_slave;
pub mod pki;
pub mod proxy;

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long to wait for a broker to accept connections or a subscriber to get its SUBACK.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERMed broker may take to save its persistence file and exit.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lock a mutex, ignoring poisoning (a panicking test thread must not hide the data).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read a file as (lossy) UTF-8; empty string if it does not exist.
fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, close the listener.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Send `signal` (e.g. "TERM", "KILL") to `pid` with the `kill` command.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the `kill` command");
    // A non-zero status means the process is already gone (reaped); callers wait() anyway.
    let _ = status;
}

/// Poll `child` until it exits or `timeout` passes.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL and reap; errors ignored (for Drop and cleanup paths).
fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill(); // SIGKILL on Unix
    }
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------------------------

/// One received message.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// When the subscriber received it.
    pub at: Instant,
}

impl Message {
    /// The payload parsed as JSON; panics (showing topic and payload) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {:?} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    /// The payload as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A persistent-session MQTT subscriber collecting every PUBLISH in a background thread.
#[derive(Debug)]
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    last_error: Arc<Mutex<Option<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connect to 127.0.0.1:`port` with client id `client_id` and clean_session(false),
    /// subscribe to `filter` at QoS 2 and collect every PUBLISH, reconnecting (after a short
    /// sleep) on any connection error until dropped. Returns once the first SUBACK arrived;
    /// panics after 10 s (or if the broker refuses the subscription).
    ///
    /// The subscription is (re)sent after a CONNACK only when the broker has no session for
    /// us or the previous SUBACK never arrived, so retained messages are not replayed by a
    /// needless re-subscribe after reconnecting to a persistent session.
    pub fn connect(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let last_error = Arc::new(Mutex::new(None));
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();

        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);

        let ctx = SubscriberTask {
            options,
            filter: filter.to_owned(),
            messages: Arc::clone(&messages),
            last_error: Arc::clone(&last_error),
            ready: ready_tx,
        };
        let thread = thread::Builder::new()
            .name(format!("mqtt-sub-{client_id}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build subscriber runtime");
                rt.block_on(ctx.run(shutdown_rx));
            })
            .expect("spawn subscriber thread");

        // Constructed before waiting so that a panic below still stops the thread (Drop).
        let subscriber = Subscriber {
            messages,
            last_error,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(())) => subscriber,
            Ok(Err(e)) => panic!("subscriber {client_id:?} on port {port}: {e}"),
            Err(_) => panic!(
                "subscriber {client_id:?} got no SUBACK for {filter:?} from port {port} within \
                 {STARTUP_TIMEOUT:?}; last connection error: {:?}",
                lock(&subscriber.last_error)
            ),
        }
    }

    /// Snapshot of all messages received so far, in arrival order (duplicates included).
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.messages).clone()
    }

    /// Number of messages received so far.
    pub fn count(&self) -> usize {
        lock(&self.messages).len()
    }

    /// Forget the messages received so far.
    pub fn clear(&self) {
        lock(&self.messages).clear();
    }

    /// The most recent connection error, if any (for failure messages).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Wait until `pred(&messages)` is true, polling every 50 ms. Returns false on timeout.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Message]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&lock(&self.messages)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until at least `n` messages arrived. Returns false on timeout.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |m| m.len() >= n)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Do not propagate a panic from the thread: we may already be unwinding.
            if thread.join().is_err() {
                eprintln!("subscriber thread panicked");
            }
        }
    }
}

struct SubscriberTask {
    options: MqttOptions,
    filter: String,
    messages: Arc<Mutex<Vec<Message>>>,
    last_error: Arc<Mutex<Option<String>>>,
    ready: mpsc::Sender<Result<(), String>>,
}

impl SubscriberTask {
    async fn run(self, mut shutdown: tokio::sync::oneshot::Receiver<()>) {
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), 100);
        let mut subscribed = false;
        let mut ready_sent = false;
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present || !subscribed {
                        subscribed = false;
                        // try_: the request channel (capacity 100) is otherwise empty.
                        if let Err(e) = client.try_subscribe(self.filter.as_str(), QoS::ExactlyOnce)
                        {
                            let e = format!("subscribe to {:?}: {e}", self.filter);
                            *lock(&self.last_error) = Some(e.clone());
                            if !ready_sent {
                                let _ = self.ready.send(Err(e));
                                ready_sent = true;
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let failed = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure));
                    if failed {
                        if !ready_sent {
                            let _ = self.ready.send(Err(format!(
                                "broker refused subscription to {:?}: {:?}",
                                self.filter, ack.return_codes
                            )));
                            ready_sent = true;
                        }
                    } else {
                        subscribed = true;
                        if !ready_sent {
                            let _ = self.ready.send(Ok(()));
                            ready_sent = true;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    lock(&self.messages).push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        at: Instant::now(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    *lock(&self.last_error) = Some(e.to_string());
                    // poll() has no backoff of its own: sleep, but stay responsive to shutdown.
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        // Best-effort clean DISCONNECT (the session stays on the broker: clean_session false).
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

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
        fs::create_dir_all(log_dir).expect("create gateway log dir");
        let (log_path, log_file) = new_log_file(log_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
        cmd.args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log file"))
            .stderr(log_file);
        cmd.env("RUST_LOG", filter);
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
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
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

// ---- fieldgate-specific helpers -------------------------------------------

/// A config for a gateway `gw` talking to `port`, with the given `devices:`
/// YAML (already indented by two spaces per item) and extra `mqtt:` keys.
pub fn write_config(dir: &Path, port: u16, mqtt_extra: &str, devices: &str) -> PathBuf {
    write_config_with_store(dir, port, "", mqtt_extra, devices)
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

/// A config with the whole `mqtt:` section given (indented keys, no header).
pub fn write_config_mqtt(dir: &Path, mqtt: &str, devices: &str) -> PathBuf {
    let path = dir.join("fieldgate.yaml");
    let text = format!(
        "gateway:\n  id: gw\n  state_dir: {state}\n  status_interval: 1s\nstore:\n  flush_interval: 50ms\nmqtt:\n  backoff_min: 100ms\n  backoff_max: 1s\n{mqtt}devices:\n{devices}",
        state = dir.join("state").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// As `write_config`, with extra `store:` keys too.
pub fn write_config_with_store(
    dir: &Path,
    port: u16,
    store_extra: &str,
    mqtt_extra: &str,
    devices: &str,
) -> PathBuf {
    let path = dir.join("fieldgate.yaml");
    let text = format!(
        "gateway:\n  id: gw\n  state_dir: {state}\n  status_interval: 1s\nstore:\n  flush_interval: 50ms\n{store_extra}mqtt:\n  url: mqtt://127.0.0.1:{port}\n  backoff_min: 100ms\n  backoff_max: 1s\n{mqtt_extra}devices:\n{devices}",
        state = dir.join("state").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `fieldgate queue --config <config> <args>`: (exit code, stdout).
pub fn queue(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["queue", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run fieldgate queue");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The `rows` figure of `queue stats`.
pub fn queued_rows(config: &Path) -> u64 {
    let (code, text) = queue(config, &["stats"]);
    assert_eq!(code, 0, "{text}");
    if text.starts_with("no store at") {
        return 0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("rows"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rows line in {text}"))
}

/// `count` readings from a simulated device at `poll`, with `extra` keys.
pub fn sim_device(name: &str, poll: &str, count: u64, extra: &str) -> String {
    format!(
        "  - name: {name}\n    kind: simulated\n    poll: {poll}\n    count: {count}\n{extra}    points:\n      - {{ name: v, signal: ramp, min: 0, max: 1000, period: 10s }}\n"
    )
}

/// Telemetry messages as (device, seq, qos), in arrival order.
pub fn telemetry(messages: &[Message]) -> Vec<(String, i64, u8)> {
    messages
        .iter()
        .filter(|m| m.topic.contains("/telemetry/"))
        .map(|m| {
            let json = m.json();
            let device = json["device"].as_str().expect("device").to_owned();
            let seq = json["seq"].as_i64().expect("seq");
            (device, seq, m.qos)
        })
        .collect()
}

/// Distinct seqs received.
pub fn distinct_seqs(messages: &[Message]) -> std::collections::BTreeSet<i64> {
    telemetry(messages)
        .into_iter()
        .map(|(_, seq, _)| seq)
        .collect()
}

/// Panics unless every device's readings arrived in ascending seq order,
/// ignoring re-sent duplicates of already-seen seqs.
pub fn assert_ordered_per_device(messages: &[Message]) {
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for (device, seq, _) in telemetry(messages) {
        if !seen.insert(seq) {
            continue;
        }
        let prev = last.insert(device.clone(), seq).unwrap_or(0);
        assert!(
            seq > prev,
            "device {device}: seq {seq} arrived after {prev}"
        );
    }
}

/// Rows left in the store of a stopped gateway.
pub fn stored_rows(dir: &Path) -> u64 {
    let db = dir.join("state").join("fieldgate.db");
    fieldgate::store::Outbox::open(&db, Default::default())
        .and_then(|o| o.totals())
        .expect("open store")
        .rows
}

/// The seq the store would give next: everything below was committed.
pub fn next_seq(dir: &Path) -> i64 {
    let db = dir.join("state").join("fieldgate.db");
    fieldgate::store::Outbox::open(&db, Default::default())
        .expect("open store")
        .next_seq()
}

// ---- serial ports ------------------------------------------------------------

/// A pseudo-terminal made by `socat` with a symlink at `link`: the gateway
/// opens `link` like a serial port, and what the test [`Pty::send`]s comes
/// out there. Closing it (or dropping it) removes the terminal and the link,
/// as unplugging a USB serial adapter does.
#[derive(Debug)]
pub struct Pty {
    /// `None` once closed.
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    pub link: PathBuf,
}

impl Pty {
    /// Starts socat and waits until the link exists (it appears shortly after
    /// socat starts).
    pub fn start(link: &Path) -> Pty {
        let mut child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", link.display()))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn socat (apt install socat)");
        let stdin = child.stdin.take();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while fs::symlink_metadata(link).is_err() {
            assert!(
                Instant::now() < deadline,
                "socat made no link at {}",
                link.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Pty {
            child: Some(child),
            stdin,
            link: link.to_owned(),
        }
    }

    /// Writes `bytes` to the terminal, as the device would.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("pty is open");
        stdin.write_all(bytes).expect("write to socat");
        stdin.flush().expect("flush to socat");
    }

    /// Removes the terminal: SIGTERM, so socat removes its link too.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stdin = None;
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), "TERM");
        if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
            kill_and_reap(&mut child);
        }
        let _ = fs::remove_file(&self.link);
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The latest `P/status` counters of `device` (`devices.<device>`), if any.
pub fn device_status(messages: &[Message], device: &str) -> Option<serde_json::Value> {
    messages
        .iter()
        .rev()
        .filter(|m| m.topic.ends_with("/status"))
        .find_map(|m| m.json().get("devices")?.get(device).cloned())
}

/// The values of `device`'s readings, in arrival order, duplicates dropped.
pub fn device_values(messages: &[Message], device: &str) -> Vec<serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter(|m| m.topic.ends_with(&format!("/telemetry/{device}")))
        .map(Message::json)
        .filter(|j| seen.insert(j["seq"].as_i64()))
        .map(|j| j["values"].clone())
        .collect()
}
