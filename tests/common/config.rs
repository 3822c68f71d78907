//! Config files for the gateway under test: gateway `gw`, state in the test
//! directory, and short intervals (flush, status, backoff) so tests run fast.

use std::path::{Path, PathBuf};

/// A config for a gateway `gw` talking to `port`, with the given `devices:`
/// YAML (already indented by two spaces per item) and extra `mqtt:` keys.
pub fn write_config(dir: &Path, port: u16, mqtt_extra: &str, devices: &str) -> PathBuf {
    write_config_with_store(dir, port, "", mqtt_extra, devices)
}

/// A config with the whole `mqtt:` section given (indented keys, no header).
pub fn write_config_mqtt(dir: &Path, mqtt: &str, devices: &str) -> PathBuf {
    write(dir, "", "", mqtt, devices)
}

/// As `write_config`, with extra `store:` keys too.
pub fn write_config_with_store(
    dir: &Path,
    port: u16,
    store_extra: &str,
    mqtt_extra: &str,
    devices: &str,
) -> PathBuf {
    let url = format!("  url: mqtt://127.0.0.1:{port}\n");
    write(dir, store_extra, &url, mqtt_extra, devices)
}

/// `fieldgate.yaml` in `dir`; `mqtt_head` and `mqtt_tail` go either side
/// of the backoff keys.
fn write(dir: &Path, store: &str, mqtt_head: &str, mqtt_tail: &str, devices: &str) -> PathBuf {
    let path = dir.join("fieldgate.yaml");
    let text = format!(
        "gateway:\n  id: gw\n  state_dir: {state}\n  status_interval: 1s\nstore:\n  flush_interval: 50ms\n{store}mqtt:\n{mqtt_head}  backoff_min: 100ms\n  backoff_max: 1s\n{mqtt_tail}devices:\n{devices}",
        state = dir.join("state").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// `count` readings from a simulated device at `poll`, with `extra` keys.
/// It is not reported offline once its readings end (`offline_after: 1h`),
/// so its availability costs one message (and one seq), `online`, per store.
pub fn sim_device(name: &str, poll: &str, count: u64, extra: &str) -> String {
    format!(
        "  - name: {name}\n    kind: simulated\n    poll: {poll}\n    count: {count}\n    offline_after: 1h\n{extra}    points:\n      - {{ name: v, signal: ramp, min: 0, max: 1000, period: 10s }}\n"
    )
}
