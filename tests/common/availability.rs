//! Reading `P/availability/{device}` of gateway `gw`: what a subscriber
//! saw, and what the broker retains (asked of a fresh subscriber).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use super::{Message, Subscriber};

/// The filter of a subscriber to every device's availability.
pub const AVAILABILITY: &str = "fieldgate/gw/availability/#";

/// How long a fresh subscriber waits for the retained messages after its
/// SUBACK (mosquitto sends them at once).
const RETAINED_WAIT: Duration = Duration::from_millis(1_500);

fn device_of(message: &Message) -> Option<&str> {
    message.topic.strip_prefix("fieldgate/gw/availability/")
}

/// The availability payloads of `device`, in arrival order (`""` for an
/// empty message).
pub fn availability(messages: &[Message], device: &str) -> Vec<String> {
    (messages.iter())
        .filter(|m| device_of(m) == Some(device))
        .map(Message::text)
        .collect()
}

/// The same, with repeats of the same state in a row counted once.
pub fn availability_changes(messages: &[Message], device: &str) -> Vec<String> {
    let mut states = availability(messages, device);
    states.dedup();
    states
}

/// What the broker retains on each device's availability topic, as a new
/// subscriber `client` receives it.
pub fn retained_availability(port: u16, client: &str) -> BTreeMap<String, String> {
    let sub = Subscriber::connect(port, client, AVAILABILITY);
    std::thread::sleep(RETAINED_WAIT);
    (sub.messages().iter())
        .filter(|m| m.retain)
        .filter_map(|m| Some((device_of(m)?.to_owned(), m.text())))
        .collect()
}

/// Removes the retained availability of `device` at the broker, as a
/// cloud operator clearing a topic would.
pub fn clear_retained_availability(port: u16, device: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-r",
            "-n",
        ])
        .args(["-t", &format!("fieldgate/gw/availability/{device}")])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}
