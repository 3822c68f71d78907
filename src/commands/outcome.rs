//! How a command ended, where its answer goes, and the answer's payload.

use serde_json::{Value, json};

use crate::uplink::payload::timestamp;

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    Ok(Option<(Value, i64)>),
    Rejected(String),
    Failed(String),
    Expired(String),
}

/// Where an answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

/// `{"id":"c-17","status":"ok"|"rejected"|"failed"|"expired","error":"…","value":…,"ts":"…"}`
pub fn response(id: &str, outcome: &CommandOutcome, now_ms: i64) -> String {
    let (status, error) = match outcome {
        CommandOutcome::Ok(_) => ("ok", None),
        CommandOutcome::Rejected(why) => ("rejected", Some(why)),
        CommandOutcome::Failed(why) => ("failed", Some(why)),
        CommandOutcome::Expired(why) => ("expired", Some(why)),
    };
    let mut body = json!({ "id": id, "status": status, "ts": timestamp(now_ms) });
    if let Some(error) = error {
        body["error"] = error.as_str().into();
    }
    if let CommandOutcome::Ok(Some((value, ts))) = outcome {
        body["value"] = value.clone();
        body["value_ts"] = timestamp(*ts).into();
    }
    body.to_string()
}
