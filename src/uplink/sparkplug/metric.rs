//! Points as Sparkplug metrics: their datatypes, and their values encoded
//! as the datatype says.

use std::collections::BTreeMap;

use serde_json::Value;

use super::proto::DataType;
use super::proto::payload::{Metric, metric};
use crate::config::modbus::ValueType;
use crate::config::report::Function;
use crate::config::{Config, PointShape};

/// Per device, its metrics and their datatypes, in name order.
pub type Metrics = BTreeMap<String, DataType>;

/// What the configuration declares: per device, the metrics its births
/// list. Devices whose points come from a decoder start empty and learn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub devices: BTreeMap<String, Metrics>,
}

impl Model {
    pub fn of(config: &Config) -> Model {
        let devices = config
            .devices
            .iter()
            .map(|d| (d.name().to_string(), metrics_of(&d.shapes())))
            .collect();
        Model { devices }
    }

    /// The alias births give a declared metric: its place among all the
    /// node's declared metrics, in device and name order, from 1. The
    /// same configuration gives the same aliases.
    pub fn alias_of(&self, device: &str, name: &str) -> Option<u64> {
        let mut alias = 1;
        for (d, metrics) in &self.devices {
            if d == device {
                let at = metrics.keys().position(|n| n == name)?;
                return Some(alias + at as u64);
            }
            alias += metrics.len() as u64;
        }
        None
    }

    /// The metric of `device` that `alias` stands for.
    pub fn name_of(&self, device: &str, alias: u64) -> Option<String> {
        let mut first = 1;
        for (d, metrics) in &self.devices {
            if d == device {
                let at = usize::try_from(alias.checked_sub(first)?).ok()?;
                return metrics.keys().nth(at).cloned();
            }
            first += metrics.len() as u64;
        }
        None
    }
}

/// A point summarised in windows is one metric per function
/// (`temperature/mean`, ...): counts are whole numbers, the rest doubles.
fn metrics_of(shapes: &[PointShape]) -> Metrics {
    let mut metrics = Metrics::new();
    for shape in shapes {
        if shape.functions.is_empty() {
            metrics.insert(shape.name.clone(), datatype(shape.value_type));
        }
        for f in &shape.functions {
            let t = match f {
                Function::Count => DataType::UInt64,
                _ => DataType::Double,
            };
            metrics.insert(format!("{}/{}", shape.name, f.as_str()), t);
        }
    }
    metrics
}

/// The table of the Sparkplug 3.0 specification.
pub fn datatype(t: ValueType) -> DataType {
    match t {
        ValueType::Bool => DataType::Boolean,
        ValueType::U16 => DataType::UInt16,
        ValueType::I16 => DataType::Int16,
        ValueType::U32 => DataType::UInt32,
        ValueType::I32 => DataType::Int32,
        ValueType::U64 => DataType::UInt64,
        ValueType::I64 => DataType::Int64,
        ValueType::F32 => DataType::Float,
        ValueType::F64 => DataType::Double,
        ValueType::String => DataType::String,
    }
}

/// The datatype a value not declared in advance is born with.
pub fn datatype_of(value: &Value) -> DataType {
    match value {
        Value::Bool(_) => DataType::Boolean,
        Value::Number(n) if n.is_i64() => DataType::Int64,
        Value::Number(n) if n.is_u64() => DataType::UInt64,
        Value::Number(_) => DataType::Double,
        _ => DataType::String,
    }
}

/// The readings' values as metrics: a window's summary (an object) is one
/// metric per function; `null` is a metric without a value.
pub fn flatten(values: &serde_json::Map<String, Value>) -> Vec<(String, &Value)> {
    let mut out = Vec::with_capacity(values.len());
    for (name, value) in values {
        match value {
            Value::Object(summary) => {
                out.extend(summary.iter().map(|(f, v)| (format!("{name}/{f}"), v)));
            }
            v => out.push((name.clone(), v)),
        }
    }
    out
}

/// `value` as `datatype` says, or `None` when it cannot be (a string for a
/// number, a fraction or a value out of range for an integer): the metric
/// is then born again with the value's own datatype.
pub fn encode(datatype: DataType, value: &Value) -> Option<metric::Value> {
    use metric::Value as V;
    let whole = || -> Option<i128> {
        let n = value.as_number()?;
        if let Some(i) = n.as_i64() {
            return Some(i.into());
        }
        if let Some(u) = n.as_u64() {
            return Some(u.into());
        }
        let f = n.as_f64()?;
        (f.fract() == 0.0 && f.abs() < 1e19).then_some(f as i128)
    };
    // Signed types travel as their two's complement in their own width.
    let signed = |bits: u32| -> Option<i128> {
        let v = whole()?;
        let half = 1i128 << (bits - 1);
        (-half..half)
            .contains(&v)
            .then_some(if v < 0 { v + (half << 1) } else { v })
    };
    let unsigned = |bits: u32| whole().filter(|v| (0..(1i128 << bits)).contains(v));
    Some(match datatype {
        DataType::Boolean => V::BooleanValue(value.as_bool()?),
        DataType::String | DataType::Text => V::StringValue(value.as_str()?.to_owned()),
        DataType::Float => V::FloatValue(value.as_f64()? as f32),
        DataType::Double => V::DoubleValue(value.as_f64()?),
        DataType::Int8 => V::IntValue(signed(8)? as u32),
        DataType::Int16 => V::IntValue(signed(16)? as u32),
        DataType::Int32 => V::IntValue(signed(32)? as u32),
        DataType::Int64 => V::LongValue(signed(64)? as u64),
        DataType::UInt8 => V::IntValue(unsigned(8)? as u32),
        DataType::UInt16 => V::IntValue(unsigned(16)? as u32),
        DataType::UInt32 => V::IntValue(unsigned(32)? as u32),
        DataType::UInt64 => V::LongValue(unsigned(64)? as u64),
        _ => return None,
    })
}

/// A value from a host as JSON, read as `datatype` says (signed integers
/// are their two's complement in their width), or as its field says.
pub fn decode(datatype: Option<DataType>, value: &metric::Value) -> Value {
    use metric::Value as V;
    let signed = |v: u64, bits: u32| -> i64 {
        let v = i128::from(v) & ((1i128 << bits) - 1);
        let half = 1i128 << (bits - 1);
        (if v >= half { v - (half << 1) } else { v }) as i64
    };
    // A host may put any integer in either field (pysparkplug sends an
    // untyped one as a 64-bit long): its datatype says how wide it is.
    let whole = match value {
        V::IntValue(v) => Some(u64::from(*v)),
        V::LongValue(v) => Some(*v),
        _ => None,
    };
    match (whole, datatype) {
        (Some(v), Some(DataType::Int8)) => signed(v, 8).into(),
        (Some(v), Some(DataType::Int16)) => signed(v, 16).into(),
        (Some(v), Some(DataType::Int32)) => signed(v, 32).into(),
        (Some(v), Some(DataType::Int64)) => signed(v, 64).into(),
        (Some(v), _) => v.into(),
        (None, _) => match value {
            V::FloatValue(v) => f64::from(*v).into(),
            V::DoubleValue(v) => (*v).into(),
            V::BooleanValue(v) => (*v).into(),
            V::StringValue(v) => v.clone().into(),
            _ => Value::Null,
        },
    }
}

/// A metric with its name, datatype and timestamp, and its value (or
/// `is_null`).
pub fn metric(name: &str, datatype: DataType, ts_ms: i64, value: Option<metric::Value>) -> Metric {
    Metric {
        name: Some(name.to_owned()),
        timestamp: Some(ts_ms.max(0) as u64),
        datatype: Some(datatype as u32),
        is_null: value.is_none().then_some(true),
        value,
        ..Metric::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metric::Value as V;
    use serde_json::json;

    #[test]
    fn values_are_encoded_as_their_datatype_says() {
        assert_eq!(
            encode(DataType::Int16, &json!(-5)),
            Some(V::IntValue(65_531))
        );
        assert_eq!(
            encode(DataType::Int64, &json!(-1)),
            Some(V::LongValue(u64::MAX))
        );
        assert_eq!(
            encode(DataType::UInt32, &json!(4_000_000_000u64)),
            Some(V::IntValue(4_000_000_000))
        );
        assert_eq!(
            encode(DataType::UInt16, &json!(12.0)),
            Some(V::IntValue(12))
        );
        assert_eq!(encode(DataType::UInt16, &json!(70_000)), None);
        assert_eq!(encode(DataType::UInt16, &json!(-1)), None);
        assert_eq!(encode(DataType::UInt16, &json!(1.5)), None);
        assert_eq!(encode(DataType::Double, &json!("x")), None);
        assert_eq!(
            encode(DataType::Double, &json!(3)),
            Some(V::DoubleValue(3.0))
        );
        assert_eq!(
            encode(DataType::Boolean, &json!(true)),
            Some(V::BooleanValue(true))
        );
        assert_eq!(encode(DataType::String, &json!(1)), None);
    }

    #[test]
    fn host_values_are_read_as_their_datatype_says() {
        assert_eq!(
            decode(Some(DataType::Int16), &V::IntValue(65_531)),
            json!(-5)
        );
        assert_eq!(
            decode(Some(DataType::Int64), &V::LongValue(u64::MAX)),
            json!(-1)
        );
        assert_eq!(
            decode(Some(DataType::UInt32), &V::IntValue(4_000_000_000)),
            json!(4_000_000_000u64)
        );
        assert_eq!(decode(None, &V::DoubleValue(2.5)), json!(2.5));
        // An untyped -7 as pysparkplug sends it, for an Int16 metric.
        assert_eq!(
            decode(Some(DataType::Int16), &V::LongValue(-7i64 as u64)),
            json!(-7)
        );
    }

    #[test]
    fn aliases_number_the_declared_metrics_in_order() {
        let mut model = Model::default();
        model
            .devices
            .insert("b".into(), [("x".into(), DataType::Double)].into());
        let a = [
            ("p".into(), DataType::Double),
            ("q".into(), DataType::Boolean),
        ];
        model.devices.insert("a".into(), a.into());
        assert_eq!(model.alias_of("a", "q"), Some(2));
        assert_eq!(model.alias_of("b", "x"), Some(3));
        assert_eq!(model.alias_of("b", "y"), None);
        assert_eq!(model.name_of("b", 3).as_deref(), Some("x"));
        assert_eq!(model.name_of("b", 2), None);
        assert_eq!(model.name_of("a", 0), None);
    }

    #[test]
    fn windows_are_one_metric_per_function() {
        let values = json!({"t": {"min": 1.0, "count": 3}, "on": true});
        let serde_json::Value::Object(values) = values else {
            panic!("an object")
        };
        let flat = flatten(&values);
        let names: Vec<&str> = flat.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["on", "t/count", "t/min"]);
        let shapes = [PointShape {
            name: "t".into(),
            value_type: ValueType::F64,
            functions: vec![Function::Mean, Function::Count],
            ..PointShape::default()
        }];
        let m = metrics_of(&shapes);
        assert_eq!(m.get("t/mean"), Some(&DataType::Double));
        assert_eq!(m.get("t/count"), Some(&DataType::UInt64));
        assert_eq!(m.len(), 2);
    }
}
