//! Sparkplug B messages as a host that is not ours reads them: captured
//! payloads go through pysparkplug (PyPI) in the virtualenv
//! `scripts/test.sh` makes (`target/sparkplug-venv`, or the Python in
//! `FIELDGATE_SPARKPLUG_PYTHON`), which decodes each one or fails.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::Message;

fn python() -> PathBuf {
    match std::env::var_os("FIELDGATE_SPARKPLUG_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sparkplug-venv/bin/python"),
    }
}

/// Every `spBv1.0/` message of `messages`, in order, decoded by
/// pysparkplug: `{"type", "device", "seq", "timestamp", "metrics": [{"name",
/// "datatype", "value", "is_null", "is_historical", "timestamp"}]}`.
/// Panics when pysparkplug cannot decode one.
pub fn decode(messages: &[Message]) -> Vec<Value> {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs pysparkplug (or set FIELDGATE_SPARKPLUG_PYTHON)",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sparkplug/decode.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the decoder");
    let mut input = String::new();
    for m in messages.iter().filter(|m| m.topic.starts_with("spBv1.0/")) {
        let hex: String = m.payload.iter().map(|b| format!("{b:02x}")).collect();
        input.push_str(&json!({"topic": m.topic, "payload": hex}).to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().expect("stdin");
    // A thread writes while this one reads: a large capture fills both pipes.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("run the decoder");
    writer
        .join()
        .expect("writer")
        .expect("write to the decoder");
    assert!(
        out.status.success(),
        "pysparkplug could not decode what the gateway sent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("decoder output is JSON"))
        .collect()
}

/// The metric `name` of a decoded message.
pub fn metric<'a>(message: &'a Value, name: &str) -> Option<&'a Value> {
    message["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// Decoded messages of `kind` (`"DDATA"`, ...) for `device` (`None`: the node's).
pub fn of<'a>(decoded: &'a [Value], kind: &str, device: Option<&str>) -> Vec<&'a Value> {
    decoded
        .iter()
        .filter(|m| m["type"] == kind && m["device"].as_str() == device)
        .collect()
}

/// Sends what a host sends, encoded by pysparkplug: `args` after the port
/// as `tests/sparkplug/command.py` takes them.
pub fn host_command(port: u16, args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sparkplug/command.py");
    let out = Command::new(python())
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run the host command");
    assert!(
        out.status.success(),
        "the host command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
