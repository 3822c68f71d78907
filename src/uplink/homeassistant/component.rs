//! One point as Home Assistant components: a sensor (one per function of a
//! window), a binary sensor, or, when commands may write it, a number or a
//! switch.

use serde_json::{Value, json};

use crate::config::entity::{self, EntityHints, StateClass};
use crate::config::modbus::ValueType;
use crate::config::{PointShape, WriteRange};

/// Where a device's components read and write.
pub struct Context<F: Fn(&str) -> String> {
    /// `{gateway}_{device}`: what unique ids start with.
    pub unique: String,
    pub state_topic: String,
    pub set_topic: F,
}

/// The components of a point: (id in `cmps`, platform, body).
pub fn of<F: Fn(&str) -> String>(
    point: &PointShape,
    ctx: &Context<F>,
) -> Vec<(String, &'static str, Value)> {
    let label = point
        .hints
        .name
        .clone()
        .unwrap_or_else(|| point.name.clone());
    if !point.functions.is_empty() {
        return (point.functions.iter())
            .map(|f| {
                let id = format!("{}_{}", point.name, f.as_str());
                let mut body = base(ctx, &id, &format!("{label} {}", f.as_str()));
                let path = [point.name.as_str(), f.as_str()];
                body["val_tpl"] = template_for(&path, Output::Plain).into();
                // A count of samples has neither the point's unit nor its class.
                match f.as_str() {
                    "count" => numeric(&mut body, None, &EntityHints::default(), true),
                    _ => numeric(&mut body, point.unit.as_deref(), &point.hints, true),
                }
                (id, "sensor", body)
            })
            .collect();
    }
    let id = point.name.clone();
    let mut body = base(ctx, &id, &label);
    let path = [point.name.as_str()];
    let platform = match (point.write, point.value_type) {
        (Some(_), ValueType::Bool) => {
            body["val_tpl"] = template_for(&path, Output::TrueFalse).into();
            body["cmd_t"] = (ctx.set_topic)(&point.name).into();
            body["pl_on"] = "true".into();
            body["pl_off"] = "false".into();
            "switch"
        }
        (None, ValueType::Bool) => {
            body["val_tpl"] = template_for(&path, Output::OnOff).into();
            "binary_sensor"
        }
        (_, ValueType::String) => {
            body["val_tpl"] = template_for(&path, Output::Plain).into();
            "sensor"
        }
        (Some(range), t) => {
            body["val_tpl"] = template_for(&path, Output::Plain).into();
            body["cmd_t"] = (ctx.set_topic)(&point.name).into();
            let (min, max) = bounds(range, t);
            body["min"] = min.into();
            body["max"] = max.into();
            if let Some(step) = range.step {
                body["step"] = step.into();
            }
            body["mode"] = "box".into();
            numeric(&mut body, point.unit.as_deref(), &point.hints, false);
            "number"
        }
        (None, _) => {
            body["val_tpl"] = template_for(&path, Output::Plain).into();
            numeric(&mut body, point.unit.as_deref(), &point.hints, true);
            "sensor"
        }
    };
    body["p"] = platform.into();
    if let Some(icon) = &point.hints.icon {
        body["ic"] = icon.clone().into();
    }
    vec![(id, platform, body)]
}

/// A point learned from readings: a number, with what its name says (a
/// BLE sensor's `temperature`, `humidity`, `battery`...).
pub fn learned(name: &str) -> PointShape {
    let known = entity::known_measurement(name);
    PointShape {
        name: name.to_owned(),
        value_type: ValueType::F64,
        unit: known.map(|(unit, _)| unit.to_owned()),
        hints: EntityHints {
            device_class: known.map(|(_, class)| class.to_owned()),
            ..EntityHints::default()
        },
        ..PointShape::default()
    }
}

fn base<F: Fn(&str) -> String>(ctx: &Context<F>, id: &str, name: &str) -> Value {
    json!({
        "p": "sensor",
        "unique_id": format!("{}_{id}", ctx.unique),
        "name": name,
        "stat_t": ctx.state_topic,
    })
}

/// Unit, device class and state class: as given, else as the unit says;
/// numbers default to `measurement` (a sensor, not a control).
fn numeric(body: &mut Value, unit: Option<&str>, hints: &EntityHints, sensor: bool) {
    let inferred = unit.and_then(entity::infer);
    if let Some(unit) = unit {
        body["unit_of_meas"] = unit.into();
    }
    let class = (hints.device_class.clone()).or_else(|| inferred.map(|(c, _)| c.to_owned()));
    if let Some(class) = class {
        body["dev_cla"] = class.into();
    }
    if sensor {
        let state = (hints.state_class)
            .or_else(|| inferred.map(|(_, s)| s))
            .unwrap_or(StateClass::Measurement);
        body["stat_cla"] = state.as_str().into();
    }
}

/// A number control's range: as configured, else what the type holds.
fn bounds(range: WriteRange, t: ValueType) -> (f64, f64) {
    let (lo, hi) = match t {
        ValueType::U16 => (0.0, f64::from(u16::MAX)),
        ValueType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
        ValueType::U32 => (0.0, f64::from(u32::MAX)),
        ValueType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        _ => (-1e15, 1e15),
    };
    (range.min.unwrap_or(lo), range.max.unwrap_or(hi))
}

/// How a template writes the value it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// As it is (numbers, text).
    Plain,
    /// `ON` / `OFF`, a binary sensor's payloads.
    OnOff,
    /// `true` / `false`, a switch's (as its `pl_on` / `pl_off` say).
    TrueFalse,
}

/// A value template that finds the point at `path` (`[point]`, or
/// `[point, function]` for a window) in a telemetry message, a single
/// reading or a batch (the newest reading that has it), and renders empty
/// when none has it: Home Assistant keeps the state it had.
pub fn template_for(path: &[&str], output: Output) -> String {
    let mut test = String::from("r['values'] is defined");
    let mut at = String::from("r['values']");
    for key in path {
        test.push_str(&format!(" and {at} is mapping and '{key}' in {at}"));
        at.push_str(&format!("['{key}']"));
    }
    let show = match output {
        Output::Plain => "ns.v".to_owned(),
        Output::OnOff => "('ON' if ns.v else 'OFF') if ns.v is boolean else ''".to_owned(),
        Output::TrueFalse => "('true' if ns.v else 'false') if ns.v is boolean else ''".to_owned(),
    };
    format!(
        "{{% set ns = namespace(v='') %}}{{% for r in ([value_json] if value_json is mapping else value_json) %}}{{% if {test} %}}{{% set ns.v = {at} %}}{{% endif %}}{{% endfor %}}{{{{ {show} }}}}"
    )
}
