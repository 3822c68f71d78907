//! `fieldgate run` under a stand-in for systemd: a notify socket of our own
//! receives READY, the watchdog pings and STOPPING, and a JOURNAL_STREAM
//! that names the log file switches timestamps off. No broker is needed:
//! the gateway queues while the link is down.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn write_config(dir: &Path) -> std::path::PathBuf {
    // A port nothing listens on: bind, read, close.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let config = dir.join("gw.yaml");
    let yaml = format!(
        "gateway: {{ id: sd-test, state_dir: {state} }}\n\
         mqtt: {{ url: \"mqtt://127.0.0.1:{port}\", backoff_max: 1s }}\n\
         devices:\n  - {{ name: d, kind: simulated, poll: 100ms, points: [ {{ name: v, signal: ramp }} ] }}\n",
        state = dir.join("state").display()
    );
    fs::write(&config, yaml).expect("write config");
    config
}

fn spawn(dir: &Path, envs: &[(&str, String)], log: File) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    cmd.arg("run")
        .arg("--config")
        .arg(write_config(dir))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn fieldgate")
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fieldgate ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn next_message(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

#[test]
fn notifies_ready_watchdog_and_stopping_and_logs_for_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let log_path = dir.path().join("gw.log");
    let log = File::create(&log_path).expect("log file");
    let meta = log.metadata().expect("stat log");
    let envs = [
        ("NOTIFY_SOCKET", sock_path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_string()),
        ("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
    ];
    let mut gw = spawn(dir.path(), &envs, log);

    assert_eq!(next_message(&sock).as_deref(), Some("READY=1\n"));
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(next_message(&sock).as_deref(), Some("WATCHDOG=1\n"));
    }
    // Three pings at 200 ms each; a generous bound for a loaded CI box.
    assert!(started.elapsed() < Duration::from_secs(3));

    assert!(stop(&mut gw).success());
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while let Some(m) = next_message(&sock) {
        rest.push(m);
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1\n"), "{rest:?}");

    let text = fs::read_to_string(&log_path).expect("read log");
    assert!(text.contains("running"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    assert!(!text.lines().any(starts_with_timestamp), "{text}");
}

#[test]
fn keeps_timestamps_when_journal_stream_names_another_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("gw.log");
    let log = File::create(&log_path).expect("log file");
    let mut gw = spawn(dir.path(), &[("JOURNAL_STREAM", "1:1".to_string())], log);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("running")
    {
        assert!(Instant::now() < deadline, "fieldgate did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stop(&mut gw).success());
    let text = fs::read_to_string(&log_path).expect("read log");
    assert!(text.lines().any(starts_with_timestamp), "{text}");
}
