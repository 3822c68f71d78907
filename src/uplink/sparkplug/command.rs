//! NCMD and DCMD from a Sparkplug host, as the gateway's own commands.
//!
//! A DCMD metric names a point of the device (by name, or by the alias its
//! DBIRTH gave it) and carries the value to write; each becomes a JSON
//! command on the normal path (allow-list, range, journal, answer on
//! `P/responses`), and the written value shows in the device's next DDATA.

use prost::Message as _;
use serde_json::{Value as Json, json};

use super::metric::{Model, decode};
use super::proto::payload::Metric;
use super::proto::{DataType, Payload};

/// What a host asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// NCMD `Node Control/Rebirth` true: births again, same bdSeq.
    Rebirth,
    /// DCMD: the gateway's JSON commands, one per metric.
    Commands(Vec<Json>),
}

/// Why a message from a host is not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("not a Sparkplug B payload: {0}")]
    Undecodable(String),
    #[error("an NCMD without `Node Control/Rebirth` = true: nothing else is offered")]
    UnknownNodeCommand,
    #[error("a DCMD metric with neither a name nor an alias this node declared")]
    UnknownAlias,
    #[error("a DCMD metric for {0} without a value")]
    NoValue(String),
}

/// An NCMD (`device` `None`) or a DCMD for `device`.
pub fn request(device: Option<&str>, payload: &[u8], model: &Model) -> Result<Request, Refused> {
    let payload = Payload::decode(payload).map_err(|e| Refused::Undecodable(e.to_string()))?;
    let Some(device) = device else {
        let rebirth = payload.metrics.iter().any(|m| {
            m.name.as_deref() == Some(super::REBIRTH)
                && m.value == Some(super::proto::payload::metric::Value::BooleanValue(true))
        });
        return match rebirth {
            true => Ok(Request::Rebirth),
            false => Err(Refused::UnknownNodeCommand),
        };
    };
    let stamp = payload.timestamp.unwrap_or_default();
    let mut commands = Vec::new();
    for (i, m) in payload.metrics.iter().enumerate() {
        let name = match (&m.name, m.alias) {
            (Some(name), _) => name.clone(),
            (None, Some(alias)) => model.name_of(device, alias).ok_or(Refused::UnknownAlias)?,
            (None, None) => return Err(Refused::UnknownAlias),
        };
        let datatype = (m.datatype.and_then(|t| DataType::try_from(t as i32).ok()))
            .or_else(|| model.devices.get(device)?.get(&name).copied());
        let value = value_of(m, datatype).ok_or_else(|| Refused::NoValue(name.clone()))?;
        // The host's timestamp makes the id: a DCMD sent twice runs once.
        commands.push(json!({
            "id": format!("spb-{device}-{stamp}-{i}"),
            "device": device,
            "point": name,
            "value": value,
        }));
    }
    Ok(Request::Commands(commands))
}

/// A primary host's STATE payload: whether it is online, and when it said so.
pub fn host_state(payload: &[u8]) -> Option<(bool, u64)> {
    let state: Json = serde_json::from_slice(payload).ok()?;
    Some((state["online"].as_bool()?, state["timestamp"].as_u64()?))
}

/// A metric's value as JSON, read as its datatype says (a signed integer
/// in its two's complement), or as its field says when no datatype is known.
fn value_of(m: &Metric, datatype: Option<DataType>) -> Option<Json> {
    if m.is_null == Some(true) {
        return None;
    }
    let value = m.value.as_ref()?;
    Some(decode(datatype, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::sparkplug::metric::metric;
    use crate::uplink::sparkplug::proto::payload::metric::Value;

    fn model() -> Model {
        let mut model = Model::default();
        let meter = [("setpoint".to_owned(), DataType::Int16)].into();
        model.devices.insert("meter".into(), meter);
        model
    }

    fn payload(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(42),
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_dcmd_becomes_commands_by_name_or_alias_with_or_without_datatype() {
        let typed = metric(
            "setpoint",
            DataType::Int16,
            1,
            Some(Value::IntValue(65_531)),
        );
        let mut untyped = Metric {
            alias: model().alias_of("meter", "setpoint"),
            value: Some(Value::IntValue(65_531)),
            ..Metric::default()
        };
        let got = request(Some("meter"), &payload(vec![typed]), &model());
        let want =
            json!({"id": "spb-meter-42-0", "device": "meter", "point": "setpoint", "value": -5});
        assert_eq!(got, Ok(Request::Commands(vec![want.clone()])));
        // No name, no datatype: both from the birth.
        let got = request(Some("meter"), &payload(vec![untyped.clone()]), &model());
        assert_eq!(got, Ok(Request::Commands(vec![want])));
        untyped.alias = Some(999);
        let got = request(Some("meter"), &payload(vec![untyped]), &model());
        assert_eq!(got, Err(Refused::UnknownAlias));
    }

    #[test]
    fn an_ncmd_asks_for_a_rebirth_or_is_refused() {
        let yes = metric(
            super::super::REBIRTH,
            DataType::Boolean,
            1,
            Some(Value::BooleanValue(true)),
        );
        assert_eq!(
            request(None, &payload(vec![yes]), &model()),
            Ok(Request::Rebirth)
        );
        assert_eq!(
            request(None, &payload(vec![]), &model()),
            Err(Refused::UnknownNodeCommand)
        );
        assert!(matches!(
            request(None, b"\xff\xff", &model()),
            Err(Refused::Undecodable(_))
        ));
    }
}
