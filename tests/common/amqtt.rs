//! A second broker implementation: amqtt (PyPI, MQTT 3.1.1), from the
//! virtualenv `scripts/test.sh` makes (`target/amqtt-venv`, or the path in
//! `FIELDGATE_AMQTT`). Sessions live in memory only: a restart forgets them.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{STARTUP_TIMEOUT, free_port, kill_and_reap, read_lossy, send_signal, wait_timeout};

pub struct Amqtt {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The `amqtt` executable.
fn program() -> PathBuf {
    match std::env::var_os("FIELDGATE_AMQTT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/amqtt-venv/bin/amqtt"),
    }
}

impl Amqtt {
    /// An amqtt broker on a free port of 127.0.0.1, accepting connections.
    pub fn start() -> Amqtt {
        let program = program();
        assert!(
            program.exists(),
            "{} is missing: scripts/test.sh installs amqtt (or set FIELDGATE_AMQTT)",
            program.display()
        );
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("fieldgate-amqtt-")
                .tempdir()
                .expect("amqtt temp dir");
            let mut broker = Amqtt {
                port: free_port(),
                child: None,
                dir,
            };
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(e) => last = e,
            }
        }
        panic!("amqtt did not start after 5 attempts:\n{last}");
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                kill_and_reap(&mut child);
            }
        }
    }

    /// Stop and start again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("amqtt restart: {e}");
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("amqtt.log"))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let config = self.dir.path().join("amqtt.yaml");
        fs::write(
            &config,
            format!(
                "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{}\n\
                 plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n",
                self.port
            ),
        )
        .expect("write amqtt.yaml");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("amqtt.log"))
            .expect("open amqtt.log");
        let child = Command::new(program())
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn amqtt: {e}"))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STARTUP_TIMEOUT * 2;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("amqtt exited ({status}):\n{}", self.log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("amqtt did not listen in time:\n{}", self.log()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Amqtt {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}
