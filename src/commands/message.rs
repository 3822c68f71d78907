//! A command as it arrives on `P/commands`, and every check it must pass
//! before anything touches a device. Pure functions: easy to test, and
//! nothing here can reach hardware.

use serde::Deserialize;
use serde_json::Value;

use crate::config::{DeviceConfig, PointSpec};

/// `{"id":"c-17","device":"boiler","point":"setpoint","action":"write","value":22,"expires_at":"…"}`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub id: String,
    pub device: String,
    pub point: String,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub value: Option<Value>,
    /// RFC 3339; past it, the command is answered `expired`.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// RFC 3339; older than `commands.max_age`, the command is `expired`.
    #[serde(default)]
    pub issued_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Write,
    Read,
}

/// Why a command is not run, in words for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandRefusal {
    Rejected(String),
    Expired(String),
}

/// Longest command id kept in the journal.
const MAX_ID: usize = 128;

/// Parses a payload; on failure, the reason and the id if one could be read.
pub fn parse(payload: &[u8], max_payload: usize) -> Result<Command, (Option<String>, String)> {
    if payload.len() > max_payload {
        return Err((
            None,
            format!(
                "payload of {} bytes is over the limit of {max_payload}",
                payload.len()
            ),
        ));
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| (None, format!("invalid JSON: {e}")))?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    let command: Command =
        serde_json::from_value(value).map_err(|e| (id.clone(), format!("invalid command: {e}")))?;
    if command.id.is_empty() || command.id.len() > MAX_ID {
        return Err((None, format!("`id` must have 1 to {MAX_ID} characters")));
    }
    Ok(command)
}

/// A command that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The point the command is about.
    pub point: PointSpec,
    /// When it expires (`expires_at`, or `issued_at` + `commands.max_age`,
    /// whichever comes first), in Unix epoch milliseconds: it must not
    /// reach the device later, however long it waits for its turn.
    pub expires_ms: Option<i64>,
}

/// Checks a parsed command against the running devices and the clock.
pub fn check(
    command: &Command,
    devices: &[DeviceConfig],
    now_ms: i64,
    max_age_ms: i64,
) -> Result<Checked, CommandRefusal> {
    let rejected = |why: String| CommandRefusal::Rejected(why);
    let mut expires_ms: Option<i64> = None;
    if let Some(expires) = &command.expires_at {
        let at = timestamp(expires).map_err(|e| rejected(format!("invalid `expires_at`: {e}")))?;
        if at <= now_ms {
            return Err(CommandRefusal::Expired(format!("expired at {expires}")));
        }
        expires_ms = Some(at);
    }
    if let Some(issued) = &command.issued_at {
        let at = timestamp(issued).map_err(|e| rejected(format!("invalid `issued_at`: {e}")))?;
        if now_ms - at > max_age_ms {
            return Err(CommandRefusal::Expired(format!(
                "issued at {issued}, more than commands.max_age ago"
            )));
        }
        let end = at.saturating_add(max_age_ms);
        expires_ms = Some(expires_ms.map_or(end, |e| e.min(end)));
    }
    let device = devices
        .iter()
        .find(|d| d.name().as_str() == command.device)
        .ok_or_else(|| rejected(format!("unknown device `{}`", command.device)))?;
    let point = device
        .spec()
        .points()
        .into_iter()
        .find(|p| p.name == command.point)
        .ok_or_else(|| {
            rejected(format!(
                "device `{}` has no point `{}`",
                command.device, command.point
            ))
        })?;
    if command.action == Action::Write {
        if !point.writable {
            return Err(rejected(format!("point `{}` is not writable", point.name)));
        }
        let value = command
            .value
            .as_ref()
            .ok_or_else(|| rejected("a write needs a `value`".into()))?;
        match value {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if let Some(min) = point.min.filter(|min| x < *min) {
                    return Err(rejected(format!("{x} is below the point's min {min}")));
                }
                if let Some(max) = point.max.filter(|max| x > *max) {
                    return Err(rejected(format!("{x} is above the point's max {max}")));
                }
            }
            Value::Bool(_) | Value::String(_) => {}
            other => {
                return Err(rejected(format!(
                    "a value must be a number, a bool or a string, not {other}"
                )));
            }
        }
    }
    Ok(Checked { point, expires_ms })
}

fn timestamp(text: &str) -> Result<i64, String> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn devices() -> Vec<DeviceConfig> {
        let text = r#"
gateway: { id: gw }
mqtt: { url: "mqtt://h" }
devices:
  - name: boiler
    kind: modbus
    tcp: { host: 127.0.0.1, port: 1502 }
    points:
      - { name: setpoint, register: holding, address: 10, type: u16, writable: true, min: 5, max: 80 }
      - { name: temperature, register: input, address: 0, type: i16 }
  - { name: wave, kind: simulated, points: [{ name: v, signal: sine }] }
"#;
        load_str(text, "t.yaml").unwrap().devices
    }

    fn command(json: &str) -> Command {
        parse(json.as_bytes(), 16_384).unwrap()
    }

    const NOW: i64 = 1_795_600_800_000; // 2026-11-25T10:00:00Z

    #[test]
    fn a_valid_write_and_a_read_pass() {
        let write = command(r#"{"id":"c-1","device":"boiler","point":"setpoint","value":22}"#);
        assert_eq!(write.action, Action::Write);
        assert!(check(&write, &devices(), NOW, 300_000).is_ok());
        let read =
            command(r#"{"id":"c-2","device":"boiler","point":"temperature","action":"read"}"#);
        assert!(check(&read, &devices(), NOW, 300_000).is_ok());
    }

    #[test]
    fn every_rejection_has_its_own_reason() {
        let reason = |json: &str| match check(&command(json), &devices(), NOW, 300_000) {
            Err(CommandRefusal::Rejected(why)) => why,
            other => panic!("{json}: {other:?}"),
        };
        assert_eq!(
            reason(r#"{"id":"a","device":"nobody","point":"x","value":1}"#),
            "unknown device `nobody`"
        );
        assert_eq!(
            reason(r#"{"id":"a","device":"boiler","point":"x","value":1}"#),
            "device `boiler` has no point `x`"
        );
        assert_eq!(
            reason(r#"{"id":"a","device":"boiler","point":"temperature","value":1}"#),
            "point `temperature` is not writable"
        );
        assert_eq!(
            reason(r#"{"id":"a","device":"wave","point":"v","value":1}"#),
            "point `v` is not writable"
        );
        assert_eq!(
            reason(r#"{"id":"a","device":"boiler","point":"setpoint","value":81}"#),
            "81 is above the point's max 80"
        );
        assert_eq!(
            reason(r#"{"id":"a","device":"boiler","point":"setpoint","value":4.5}"#),
            "4.5 is below the point's min 5"
        );
        assert!(
            reason(r#"{"id":"a","device":"boiler","point":"setpoint","value":[1]}"#)
                .starts_with("a value must be")
        );
        assert_eq!(
            reason(r#"{"id":"a","device":"boiler","point":"setpoint"}"#),
            "a write needs a `value`"
        );
    }

    #[test]
    fn expired_commands_are_told_apart() {
        let past = command(
            r#"{"id":"a","device":"boiler","point":"setpoint","value":22,"expires_at":"2026-11-25T09:59:59Z"}"#,
        );
        assert!(matches!(
            check(&past, &devices(), NOW, 300_000),
            Err(CommandRefusal::Expired(_))
        ));
        let old = command(
            r#"{"id":"a","device":"boiler","point":"setpoint","value":22,"issued_at":"2026-11-25T09:50:00Z"}"#,
        );
        assert!(matches!(
            check(&old, &devices(), NOW, 300_000),
            Err(CommandRefusal::Expired(_))
        ));
        let fresh = command(
            r#"{"id":"a","device":"boiler","point":"setpoint","value":22,"expires_at":"2026-11-25T10:05:00Z"}"#,
        );
        let checked = check(&fresh, &devices(), NOW, 300_000).unwrap();
        assert_eq!(checked.expires_ms, Some(NOW + 300_000));
        // The earlier of `expires_at` and `issued_at` + max_age holds.
        let both = command(
            r#"{"id":"a","device":"boiler","point":"setpoint","value":22,"expires_at":"2026-11-25T10:05:00Z","issued_at":"2026-11-25T09:59:00Z"}"#,
        );
        let checked = check(&both, &devices(), NOW, 300_000).unwrap();
        assert_eq!(checked.expires_ms, Some(NOW - 60_000 + 300_000));
        let plain = command(r#"{"id":"a","device":"boiler","point":"setpoint","value":22}"#);
        assert_eq!(
            check(&plain, &devices(), NOW, 300_000).unwrap().expires_ms,
            None
        );
    }

    #[test]
    fn broken_payloads_keep_their_id_when_they_have_one() {
        assert_eq!(parse(b"{not json", 100).unwrap_err().0, None);
        let (id, why) = parse(br#"{"id":"c-9","device":"boiler"}"#, 100).unwrap_err();
        assert_eq!(id.as_deref(), Some("c-9"));
        assert!(why.contains("missing field `point`"), "{why}");
        let (_, why) = parse(&[b' '; 200], 100).unwrap_err();
        assert!(why.contains("over the limit"), "{why}");
        let (_, why) =
            parse(br#"{"id":"c","device":"d","point":"p","colour":1}"#, 100).unwrap_err();
        assert!(why.contains("unknown field `colour`"), "{why}");
    }
}
