//! The YAML of a `kind: simulated` device.

use serde::Deserialize;

use crate::config::modbus::ValueType;
use crate::config::report::{self, Aggregate, Deadband, PointReport, Report};
use crate::config::{
    BatchConfig, DeviceSpec, Duration, EntityHints, PointShape, PointSpec, duplicate_point_names,
};
use crate::reading::{Name, Priority, Qos};

/// The shape of a simulated point's values over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Sine,
    Ramp,
    Random,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedDevice {
    pub name: Name,
    /// One reading per interval.
    #[serde(default = "SimulatedDevice::default_poll")]
    pub poll: Duration,
    /// MQTT QoS of this device's readings; `mqtt.qos` when unset.
    #[serde(default)]
    pub qos: Option<Qos>,
    #[serde(default)]
    pub priority: Priority,
    /// Several readings per publish, as a JSON array.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
    /// Points with a `deadband` are sent at least this often.
    #[serde(default = "SimulatedDevice::default_heartbeat")]
    pub heartbeat: Duration,
    /// Reported `offline` when no reading carried a value for this long;
    /// three polls when unset.
    #[serde(default)]
    pub offline_after: Option<Duration>,
    /// Stop after this many readings (demos and load tests); unset: forever.
    #[serde(default)]
    pub count: Option<u64>,
    pub points: Vec<SimulatedPoint>,
}

impl SimulatedDevice {
    fn default_poll() -> Duration {
        Duration::from_secs(1)
    }
    fn default_heartbeat() -> Duration {
        report::DEFAULT_HEARTBEAT
    }
}

impl DeviceSpec for SimulatedDevice {
    crate::common_device_fields!();
    fn points(&self) -> Vec<PointSpec> {
        let read_only = |p: &SimulatedPoint| PointSpec {
            name: p.name.to_string(),
            writable: false,
            min: None,
            max: None,
        };
        self.points.iter().map(read_only).collect()
    }

    fn shapes(&self) -> Vec<PointShape> {
        let shape = |p: &SimulatedPoint| {
            PointShape::new(&p.name, ValueType::F64, p.aggregate.as_ref())
                .shown(p.unit.as_ref(), &p.homeassistant)
        };
        self.points.iter().map(shape).collect()
    }

    fn offline_after(&self) -> Duration {
        report::offline_after_polls(self.offline_after, self.poll)
    }

    fn report(&self) -> Report {
        Report {
            heartbeat: self.heartbeat,
            deadband: None,
            points: (self.points.iter())
                .map(|p| (p.name.to_string(), p.report()))
                .collect(),
        }
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        if self.poll.get().is_zero() {
            found.push(("poll".into(), "must be at least 1ms".into()));
        }
        if self.points.is_empty() {
            found.push(("points".into(), "expected at least one point".into()));
        }
        found.extend(duplicate_point_names(self.points.iter().map(|p| &p.name)));
        found.extend(report::heartbeat_problems(self.heartbeat));
        found.extend(report::offline_after_problems(self.offline_after));
        for (i, point) in self.points.iter().enumerate() {
            let path = format!("points[{i}]");
            found.extend(report::point_problems(&path, &point.report(), true));
            for (key, v) in [("min", point.min), ("max", point.max)] {
                if !v.is_finite() {
                    found.push((
                        format!("points[{i}].{key}"),
                        "expected a finite number".into(),
                    ));
                }
            }
            if point.min > point.max {
                found.push((
                    format!("points[{i}].max"),
                    format!("must not be below min ({})", point.min),
                ));
            }
            if point.period.get().is_zero() {
                found.push((format!("points[{i}].period"), "must be at least 1ms".into()));
            }
        }
        found
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedPoint {
    pub name: Name,
    pub signal: Signal,
    #[serde(default)]
    pub min: f64,
    #[serde(default = "SimulatedPoint::default_max")]
    pub max: f64,
    /// Period of `sine` and `ramp`.
    #[serde(default = "SimulatedPoint::default_period")]
    pub period: Duration,
    /// The value of a `constant` signal; `min` when unset.
    #[serde(default)]
    pub value: Option<f64>,
    /// Sent only when it moved beyond this; unset: every reading.
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Sent as one summary per window instead.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
    /// What its values are in (`°C`, `kW`, ...).
    #[serde(default)]
    pub unit: Option<String>,
    /// How Home Assistant shows it.
    #[serde(default)]
    pub homeassistant: EntityHints,
}

impl SimulatedPoint {
    fn default_max() -> f64 {
        100.0
    }
    fn default_period() -> Duration {
        Duration::from_secs(60)
    }

    fn report(&self) -> PointReport {
        PointReport {
            deadband: self.deadband,
            aggregate: self.aggregate.clone(),
        }
    }
}
