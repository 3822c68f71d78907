//! The gateway as a Sparkplug B 3.0 edge node (`mqtt.format: sparkplug`).
//!
//! [`Node`] turns the store's rows into Sparkplug messages and keeps the
//! session rules: the NDEATH will carries the `bdSeq` of its CONNECT (kept
//! in the store), NBIRTH opens every connection with `seq` 0, each device
//! is born (DBIRTH, every metric with its last value or `is_null`) before
//! its first DDATA, and one `seq` counts every N and D message of the node,
//! 0 to 255 and round again. A metric that a DDATA would carry undeclared,
//! or with another datatype, gets its device born again first: every DDATA
//! metric is always in its DBIRTH, with the same datatype.
//!
//! What the session does with the messages (QoS, acks, the store) is in
//! `session.rs`; readings stored before the connection came up are sent
//! with `is_historical`.

mod command;
mod metric;
#[allow(clippy::all, missing_docs)]
mod proto;

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

pub use command::{Refused, Request, host_state, request};
use metric::Metrics;
pub use metric::Model;
use proto::DataType;
use proto::payload::Metric;
use proto::payload::metric::Value;

use crate::config::{Config, Format, SparkplugConfig};
use crate::reading::Qos;
use crate::store::Row;

/// Metrics one device may have at most: a serial line or a decoder that
/// sends ever new names must not grow the births and the memory forever.
const MAX_METRICS: usize = 1_000;

/// The node's metric that says which `bdSeq` a death belongs to.
const BD_SEQ: &str = "bdSeq";
const REBIRTH: &str = "Node Control/Rebirth";

/// What the uplink needs of the `sparkplug:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub group_id: String,
    pub edge_node: String,
    /// QoS of births, data and DDEATH.
    pub qos: Qos,
    /// The primary host application whose STATE gates the births.
    pub primary_host: Option<String>,
}

impl Settings {
    /// `None` unless `mqtt.format` is `sparkplug`.
    pub fn from_config(config: &Config) -> Option<Settings> {
        let section: &SparkplugConfig = config.sparkplug.as_ref()?;
        (config.mqtt.format == Format::Sparkplug).then(|| Settings {
            group_id: section.group_id.as_str().to_owned(),
            edge_node: section
                .edge_node
                .as_ref()
                .map_or_else(|| config.gateway.id.to_string(), |e| e.as_str().to_owned()),
            qos: section.qos.0,
            primary_host: (section.primary_host.as_ref()).map(|h| h.as_str().to_owned()),
        })
    }
}

impl Settings {
    /// The NCMD topic (`device` false) or every DCMD topic of this node.
    pub fn commands_filter(&self, device: bool) -> String {
        let Settings {
            group_id,
            edge_node,
            ..
        } = self;
        match device {
            false => format!("spBv1.0/{group_id}/NCMD/{edge_node}"),
            true => format!("spBv1.0/{group_id}/DCMD/{edge_node}/+"),
        }
    }

    /// The primary host's retained STATE topic, if there is one.
    pub fn state_topic(&self) -> Option<String> {
        let host = self.primary_host.as_ref()?;
        Some(format!("spBv1.0/STATE/{host}"))
    }

    /// For an NCMD topic of this node `Some(None)`, for a DCMD one
    /// `Some(Some(device))`; `None` for any other topic.
    pub fn command_target(&self, topic: &str) -> Option<Option<String>> {
        if topic == self.commands_filter(false) {
            return Some(None);
        }
        let prefix = self.commands_filter(true);
        let device = topic.strip_prefix(prefix.strip_suffix('+')?)?;
        (!device.is_empty() && !device.contains('/')).then(|| Some(device.to_owned()))
    }
}

/// One message for the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The node's side of the Sparkplug session, kept across connections
/// (the last values a birth reports).
#[derive(Debug)]
pub struct Node {
    settings: Settings,
    /// What the configuration declares, per device.
    model: Model,
    /// Per device, what its last DBIRTH declared: present while it is born.
    born: BTreeMap<String, Metrics>,
    /// Per device, the metrics learned from readings beyond the model.
    learned: BTreeMap<String, Metrics>,
    /// Per device and metric, the newest value sent and its time.
    last: BTreeMap<String, BTreeMap<String, (Value, i64)>>,
    /// The `seq` of the next message.
    seq: u8,
    /// NBIRTH went out on this connection: data may follow.
    alive: bool,
    bd_seq: i64,
}

impl Node {
    pub fn new(settings: Settings, model: Model) -> Node {
        Node {
            settings,
            model,
            born: BTreeMap::new(),
            learned: BTreeMap::new(),
            last: BTreeMap::new(),
            seq: 0,
            alive: false,
            bd_seq: 0,
        }
    }

    pub fn qos(&self) -> Qos {
        self.settings.qos
    }

    /// A new configuration: births from now on declare its metrics.
    /// Values of devices that are gone are forgotten.
    pub fn set_model(&mut self, model: Model) {
        let keep = |d: &String| model.devices.contains_key(d);
        self.learned.retain(|d, _| keep(d));
        self.last.retain(|d, _| keep(d));
        self.model = model;
    }

    fn topic(&self, kind: &str, device: Option<&str>) -> String {
        let Settings {
            group_id,
            edge_node,
            ..
        } = &self.settings;
        match device {
            Some(d) => format!("spBv1.0/{group_id}/{kind}/{edge_node}/{d}"),
            None => format!("spBv1.0/{group_id}/{kind}/{edge_node}"),
        }
    }

    /// The NDEATH to register as the will of a CONNECT with `bd_seq`; the
    /// NBIRTH of that connection carries the same number.
    pub fn will(&mut self, bd_seq: i64, now_ms: i64) -> Message {
        self.bd_seq = bd_seq;
        self.alive = false;
        let bd = metric::metric(BD_SEQ, DataType::Int64, now_ms, Some(bd_value(bd_seq)));
        Message {
            topic: self.topic("NDEATH", None),
            payload: encode(now_ms, None, vec![bd]),
        }
    }

    /// What opens a connection: NBIRTH (`seq` 0), then a DBIRTH for every
    /// device not known to be offline.
    pub fn births(
        &mut self,
        now_ms: i64,
        version: &str,
        queue_rows: u64,
        offline: &BTreeSet<String>,
    ) -> Vec<Message> {
        self.born.clear();
        self.seq = 0;
        self.alive = true;
        let metrics = vec![
            metric::metric(BD_SEQ, DataType::Int64, now_ms, Some(bd_value(self.bd_seq))),
            metric::metric(
                REBIRTH,
                DataType::Boolean,
                now_ms,
                Some(Value::BooleanValue(false)),
            ),
            metric::metric(
                "Properties/Version",
                DataType::String,
                now_ms,
                Some(Value::StringValue(version.to_owned())),
            ),
            metric::metric(
                "Properties/Queue Rows",
                DataType::UInt64,
                now_ms,
                Some(Value::LongValue(queue_rows)),
            ),
        ];
        let mut out = vec![Message {
            topic: self.topic("NBIRTH", None),
            payload: encode(now_ms, Some(self.next_seq()), metrics),
        }];
        let devices: Vec<String> = self.model.devices.keys().cloned().collect();
        for device in devices {
            if !offline.contains(&device) {
                out.push(self.birth(&device, now_ms));
            }
        }
        out
    }

    /// The device's DBIRTH: every metric it has, with its last value.
    pub fn birth(&mut self, device: &str, now_ms: i64) -> Message {
        let mut declared = self.model.devices.get(device).cloned().unwrap_or_default();
        if let Some(learned) = self.learned.get(device) {
            declared.extend(learned.iter().map(|(n, t)| (n.clone(), *t)));
        }
        let last = self.last.get(device);
        let metrics = declared
            .iter()
            .map(|(name, t)| {
                let (value, ts) = match last.and_then(|l| l.get(name)) {
                    Some((v, ts)) => (Some(v.clone()), *ts),
                    None => (None, now_ms),
                };
                let mut m = metric::metric(name, *t, ts, value);
                m.alias = self.model.alias_of(device, name);
                m
            })
            .collect();
        self.born.insert(device.to_owned(), declared);
        Message {
            topic: self.topic("DBIRTH", Some(device)),
            payload: encode(now_ms, Some(self.next_seq()), metrics),
        }
    }

    /// Whether NBIRTH went out on this connection (and no NDEATH since).
    pub fn alive(&self) -> bool {
        self.alive
    }

    /// The node dies on purpose (its primary host went offline): nothing
    /// more until the next births.
    pub fn dead(&mut self) {
        self.alive = false;
        self.born.clear();
    }

    pub fn is_born(&self, device: &str) -> bool {
        self.born.contains_key(device)
    }

    /// The device's DDEATH, if it was born.
    pub fn death(&mut self, device: &str, now_ms: i64) -> Option<Message> {
        self.born.remove(device)?;
        Some(Message {
            topic: self.topic("DDEATH", Some(device)),
            payload: encode(now_ms, Some(self.next_seq()), Vec::new()),
        })
    }

    /// A device's readings as one DDATA, preceded by its DBIRTH when it is
    /// not born or a metric is new or changed its datatype. Empty when the
    /// readings carry no value (a failed poll).
    pub fn data(&mut self, rows: &[Row], historical: bool, now_ms: i64) -> Vec<Message> {
        let Some(device) = rows.first().map(|r| r.device.clone()) else {
            return Vec::new();
        };
        let mut metrics = Vec::new();
        let mut rebirth = !self.born.contains_key(&device);
        for row in rows {
            let Ok(serde_json::Value::Object(values)) = serde_json::from_str(&row.values) else {
                continue;
            };
            for (name, value) in metric::flatten(&values) {
                let Some((t, v)) = self.typed(&device, &name, value, &mut rebirth) else {
                    continue;
                };
                if let Some(v) = &v {
                    self.remember(&device, &name, v, row.ts_ms);
                }
                let mut m = metric::metric(&name, t, row.ts_ms, v);
                if historical {
                    m.is_historical = Some(true);
                }
                metrics.push(m);
            }
        }
        if metrics.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if rebirth {
            out.push(self.birth(&device, now_ms));
        }
        // A metric whose datatype changed within these rows goes with the
        // datatype its birth declares only.
        let born = self.born.get(&device);
        metrics.retain(|m| {
            let declared = m.name.as_ref().and_then(|n| born?.get(n));
            declared.is_some_and(|t| Some(*t as u32) == m.datatype)
        });
        out.push(Message {
            topic: self.topic("DDATA", Some(&device)),
            payload: encode(now_ms, Some(self.next_seq()), metrics),
        });
        out
    }

    /// A metric's datatype and encoded value (`None`: null). A metric not
    /// declared, or whose value does not fit its datatype, is learned
    /// with the value's own datatype, and `rebirth` set; so is one the
    /// device's last birth did not declare this way. `None` for a null
    /// never declared, or beyond [`MAX_METRICS`].
    fn typed(
        &mut self,
        device: &str,
        name: &str,
        value: &serde_json::Value,
        rebirth: &mut bool,
    ) -> Option<(DataType, Option<Value>)> {
        let declared = self.declared(device, name);
        let found = match declared {
            Some(t) if value.is_null() => Some((t, None)),
            Some(t) => metric::encode(t, value).map(|v| (t, Some(v))),
            None => None,
        };
        let (t, v) = match found {
            Some(found) => found,
            None if value.is_null() => return None,
            None => {
                let t = metric::datatype_of(value);
                let learned = self.learned.entry(device.to_owned()).or_default();
                if !learned.contains_key(name) && learned.len() >= MAX_METRICS {
                    return None;
                }
                learned.insert(name.to_owned(), t);
                (t, metric::encode(t, value))
            }
        };
        let born = self.born.get(device).and_then(|b| b.get(name));
        if born != Some(&t) {
            *rebirth = true;
        }
        Some((t, v))
    }

    /// Keeps the newest value of a metric, for the next birth.
    fn remember(&mut self, device: &str, name: &str, value: &Value, ts_ms: i64) {
        let values = self.last.entry(device.to_owned()).or_default();
        match values.get_mut(name) {
            Some((v, ts)) if *ts <= ts_ms => (*v, *ts) = (value.clone(), ts_ms),
            Some(_) => {}
            None => {
                values.insert(name.to_owned(), (value.clone(), ts_ms));
            }
        }
    }

    /// The datatype `name` has on `device`: learned from its readings, or
    /// as the configuration declares it.
    fn declared(&self, device: &str, name: &str) -> Option<DataType> {
        (self.learned.get(device).and_then(|m| m.get(name)))
            .or_else(|| self.model.devices.get(device).and_then(|m| m.get(name)))
            .copied()
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(seq)
    }
}

fn bd_value(bd_seq: i64) -> Value {
    Value::LongValue(bd_seq as u64)
}

fn encode(now_ms: i64, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    proto::Payload {
        timestamp: Some(now_ms.max(0) as u64),
        metrics,
        seq,
        uuid: None,
        body: None,
    }
    .encode_to_vec()
}
