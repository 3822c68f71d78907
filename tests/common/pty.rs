//! Serial ports for the gateway to open, made by socat: the test writes
//! what the device would send.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{STARTUP_TIMEOUT, kill_and_reap, send_signal, wait_timeout};

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
