//! Topics and JSON payloads, as the README documents them ("MQTT topics").

use serde_json::json;

use crate::config::Origin;
use crate::health::Snapshot;
use crate::store::{QueueStatus, Row};

/// Checks a topic we are asked to publish to (a command's MQTT 5 response
/// topic): a name, not a filter, and not a broker's `$` topic. The client
/// library refuses such a publish and drops the connection, so one bad
/// topic in the store would otherwise stop the uplink for good.
pub fn check_topic(topic: &str) -> Result<(), String> {
    let shown: String = topic.chars().take(80).collect();
    let why = if topic.is_empty() {
        "is empty"
    } else if topic.len() > usize::from(u16::MAX) {
        "is longer than 65,535 bytes"
    } else if topic.contains(['+', '#']) {
        "contains a wildcard (`+` or `#`)"
    } else if topic.starts_with('$') {
        "starts with `$` (reserved for the broker)"
    } else if topic.contains('\0') {
        "contains a NUL character"
    } else {
        return Ok(());
    };
    Err(format!("topic `{shown}` {why}"))
}

/// Topics under `P = {topic_prefix}/{gateway.id}`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, gateway_id: &str) -> Topics {
        Topics {
            base: format!("{prefix}/{gateway_id}"),
        }
    }

    pub fn telemetry(&self, device: &str) -> String {
        format!("{}/telemetry/{device}", self.base)
    }

    /// Retained: `online`, `offline`, or empty once the device is removed.
    pub fn availability(&self, device: &str) -> String {
        format!("{}/availability/{device}", self.base)
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    pub fn commands(&self) -> String {
        format!("{}/commands", self.base)
    }

    pub fn responses(&self) -> String {
        format!("{}/responses", self.base)
    }

    pub fn config_set(&self) -> String {
        format!("{}/config/set", self.base)
    }

    pub fn config_state(&self) -> String {
        format!("{}/config/state", self.base)
    }

    /// Where Home Assistant sets a writable point: a bare value.
    pub fn set(&self, device: &str, point: &str) -> String {
        format!("{}/set/{device}/{point}", self.base)
    }

    /// Every `set` topic.
    pub fn set_filter(&self) -> String {
        format!("{}/set/+/+", self.base)
    }

    /// The device and point of a `set` topic.
    pub fn set_target<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix("/set/")?;
        let (device, point) = rest.split_once('/')?;
        (!device.is_empty() && !point.is_empty() && !point.contains('/')).then_some((device, point))
    }
}

/// `2026-11-25T10:00:00.123Z` for a time in milliseconds since the epoch.
pub fn timestamp(ts_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ts_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `{"seq":42,"ts":"…","device":"boiler","values":{…},"quality":"good"}`,
/// with `"error":"…"` after a failed read, and `"clock":"unsynced"` when
/// `ts` was taken while the wall clock was not synchronised and could not
/// be corrected (absent otherwise, so payloads of a synced gateway stay as
/// they were). The values are spliced in as stored: they were serialized
/// once, at ingest.
pub fn telemetry(row: &Row) -> String {
    let error = match &row.error {
        Some(e) => format!(r#","error":{}"#, serde_json::Value::from(e.as_str())),
        None => String::new(),
    };
    let clock = if row.unsynced {
        r#","clock":"unsynced""#
    } else {
        ""
    };
    format!(
        r#"{{"seq":{},"ts":"{}","device":{},"values":{},"quality":"{}"{error}{clock}}}"#,
        row.seq,
        timestamp(row.ts_ms),
        serde_json::Value::from(row.device.as_str()),
        row.values,
        row.quality.as_str(),
    )
}

/// Which configuration runs: its version and where its devices came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigInfo {
    pub version: String,
    pub origin: Origin,
}

/// The retained `P/config/state`: the outcome of the last configuration
/// received, and which one runs.
pub fn config_state(
    version: &str,
    outcome: Result<(), &str>,
    running: &ConfigInfo,
    now_ms: i64,
) -> String {
    let mut body = json!({
        "version": version,
        "status": if outcome.is_ok() { "applied" } else { "rejected" },
        "running_version": running.version,
        "running_origin": running.origin.as_str(),
        "ts": timestamp(now_ms),
    });
    if let Err(error) = outcome {
        body["error"] = error.into();
    }
    body.to_string()
}

/// The retained `P/status` while online: the birth message at connect,
/// refreshed every `gateway.status_interval`. `"clock":"unsynced"` while
/// the wall clock is not synchronised (absent once it is).
pub fn status(
    version: &str,
    config: &ConfigInfo,
    queue: &QueueStatus,
    health: &Snapshot,
    clock_synced: bool,
) -> String {
    let mut body = json!({
        "state": "online",
        "version": version,
        "config_version": config.version,
        "config_origin": config.origin.as_str(),
        "uptime_s": health.uptime_s,
        "rates": { "readings_per_s": health.readings_per_s },
        "queue": {
            "rows": queue.rows,
            "bytes": queue.bytes,
            "evicted": queue.evicted,
            "dead_letters": queue.dead_letters,
            "buffered": queue.buffered,
            "written": queue.written,
        },
        "counters": {
            "readings_in": health.readings_in,
            "published": health.published,
            "answers_published": health.answers_published,
            "reconnects": health.reconnects,
            "commands_dropped": health.commands_dropped,
            "commands_unanswered": health.commands_unanswered,
            "commands_unreadable": health.commands_unreadable,
            "discovery_coalesced": health.discovery_coalesced,
            "rebirths_coalesced": health.rebirths_coalesced,
        },
        "devices": health.devices,
        // The connection that takes commands: "down" means they wait at
        // the broker.
        "commands": { "link": if health.downstream_up { "up" } else { "down" } },
    });
    if let Some(problem) = &health.uplink_problem {
        body["uplink"] = json!({ "problem": problem });
    }
    if let Some(moved) = &queue.recovered_from {
        body["store"] = json!({ "recovered_from": moved });
    }
    if !clock_synced {
        body["clock"] = "unsynced".into();
    }
    body.to_string()
}

/// The retained last will, also sent on a clean shutdown.
pub fn offline() -> String {
    json!({ "state": "offline" }).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_topic_names_may_be_published_to() {
        assert!(check_topic("plant/a/responses").is_ok());
        assert!(check_topic("a").is_ok());
        for bad in [
            String::new(),
            "evil/#".into(),
            "a/+/b".into(),
            "#".into(),
            "$SYS/x".into(),
            "a\0b".into(),
            "x".repeat(65_536),
        ] {
            let error = check_topic(&bad).unwrap_err();
            assert!(error.starts_with("topic `"), "{error}");
            assert!(error.len() < 200, "the message quotes at most 80 chars");
        }
        assert!(check_topic(&"x".repeat(65_535)).is_ok());
    }

    use super::*;
    use crate::health::Health;
    use crate::reading::Quality;
    use crate::reading::{Priority, Qos};

    #[test]
    fn telemetry_payload_matches_the_design() {
        let row = Row {
            seq: 42,
            priority: Priority::Normal,
            qos: Qos::AtLeastOnce,
            ts_ms: 1_795_600_800_123,
            device: "boiler".into(),
            values: r#"{"temperature":21.5}"#.into(),
            quality: Quality::Good,
            error: None,
            unsynced: false,
            topic: None,
            correlation: None,
            kind: crate::store::RowKind::Reading,
        };
        let text = telemetry(&row);
        assert_eq!(
            text,
            r#"{"seq":42,"ts":"2026-11-25T10:00:00.123Z","device":"boiler","values":{"temperature":21.5},"quality":"good"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["values"]["temperature"], 21.5);

        let bad = Row {
            values: "{}".into(),
            quality: Quality::Bad,
            error: Some("timeout after 1s \"unit 3\"".into()),
            ..row
        };
        let parsed: serde_json::Value = serde_json::from_str(&telemetry(&bad)).unwrap();
        assert_eq!(parsed["quality"], "bad");
        assert_eq!(parsed["error"], "timeout after 1s \"unit 3\"");
        assert!(!telemetry(&bad).contains("clock"));

        let unsynced = Row {
            unsynced: true,
            ..bad
        };
        let parsed: serde_json::Value = serde_json::from_str(&telemetry(&unsynced)).unwrap();
        assert_eq!(parsed["clock"], "unsynced");
    }

    fn info() -> ConfigInfo {
        ConfigInfo {
            version: "local-ab".into(),
            origin: Origin::Local,
        }
    }

    #[test]
    fn config_state_says_applied_or_rejected_with_the_error() {
        let running = ConfigInfo {
            version: "v7".into(),
            origin: Origin::Remote,
        };
        let ok: serde_json::Value =
            serde_json::from_str(&config_state("v7", Ok(()), &running, 0)).unwrap();
        assert_eq!(
            (ok["status"].as_str(), ok.get("error")),
            (Some("applied"), None)
        );
        let bad: serde_json::Value = serde_json::from_str(&config_state(
            "v8",
            Err("devices[0].poll: invalid"),
            &running,
            0,
        ))
        .unwrap();
        assert_eq!(bad["status"], "rejected");
        assert_eq!(bad["error"], "devices[0].poll: invalid");
        assert_eq!(bad["running_version"], "v7");
    }

    #[test]
    fn topics_and_status_payloads() {
        let t = Topics::new("fieldgate", "pi-01");
        assert_eq!(t.telemetry("boiler"), "fieldgate/pi-01/telemetry/boiler");
        assert_eq!(t.status(), "fieldgate/pi-01/status");
        let queue = QueueStatus {
            rows: 7,
            evicted: [("pump".to_string(), 3)].into(),
            recovered_from: Some("/var/lib/fieldgate/fieldgate.db.corrupt-x".into()),
            ..QueueStatus::default()
        };
        let health = Health::new();
        health
            .device("pump")
            .bad_input
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let snap = health.snapshot();
        let b: serde_json::Value =
            serde_json::from_str(&status("0.1.0", &info(), &queue, &snap, false)).unwrap();
        assert_eq!(b["clock"], "unsynced");
        assert_eq!(b["config_origin"], "local");
        assert_eq!(b["devices"]["pump"]["bad_input"], 2);
        assert_eq!(b["counters"]["published"], 0);
        assert_eq!(b["state"], "online");
        assert_eq!(b["queue"]["rows"], 7);
        assert_eq!(b["queue"]["evicted"]["pump"], 3);
        assert!(
            b["store"]["recovered_from"]
                .as_str()
                .unwrap()
                .contains("corrupt")
        );
        let plain = status("0.1.0", &info(), &QueueStatus::default(), &snap, true);
        assert!(!plain.contains("store"), "{plain}");
        assert!(!plain.contains("clock"), "{plain}");
        assert_eq!(offline(), r#"{"state":"offline"}"#);
    }
}
