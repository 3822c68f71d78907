//! What the end-to-end tests start, one file per thing: a mosquitto
//! ([`Broker`]), a subscriber to it ([`Subscriber`]), the gateway process
//! ([`Gateway`]) with its config, socat ptys ([`Pty`]), Modbus slaves, test
//! certificates, a TCP proxy and a Home Assistant core. Everything blocks,
//! for plain `#[test]`s; nothing uses a fixed port. Signals go through the
//! `kill` command, so the tests need no libc binding.
//!
//! Compiled into every test binary, and no binary uses all of it.
#![allow(dead_code)]

pub mod amqtt;
mod availability;
pub mod bluez;
mod broker;
mod config;
mod gateway;
pub mod homeassistant;
mod messages;
pub mod modbus_slave;
pub mod mqtt_trace;
pub mod pki;
pub mod proxy;
mod pty;
mod rig;
pub mod sparkplug;
mod store;
mod subscriber;

// Each test binary uses its own part of these, and names them unqualified.
#[allow(unused_imports)]
pub use self::{
    availability::{
        AVAILABILITY, availability, availability_changes, clear_retained_availability,
        retained_availability,
    },
    broker::{Broker, publish, publish_many},
    config::{sim_device, write_config, write_config_mqtt, write_config_with_store},
    gateway::{CLOCK_HOOK_ENV, COMMANDS_READY, Gateway},
    messages::{
        assert_ordered_per_device, device_status, device_values, distinct_seqs, latest_status,
        reading_seqs_fit, telemetry,
    },
    pty::Pty,
    rig::{Rig, TELEMETRY},
    store::{next_seq, queue, queued_rows, stored_rows, stored_seqs, wait_for_queued},
    subscriber::{Message, Subscriber},
};

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for a broker to accept connections, a subscriber to get
/// its SUBACK or socat to make its link.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Checks `done` every 50 ms until it holds (true) or `timeout` has passed
/// (false).
fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
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
