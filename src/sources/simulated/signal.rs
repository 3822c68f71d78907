//! Signal shapes as pure functions of wall-clock time, so a restarted
//! gateway continues the same curve.

use crate::config::simulated::{Signal, SimulatedPoint};

impl SimulatedPoint {
    /// The value of this point at `ts_ms`.
    pub fn sample(&self, ts_ms: i64) -> f64 {
        let span = self.max - self.min;
        let period_ms = self.period.get().as_millis().max(1) as i64;
        // Phase in [0, 1) within the current period.
        let phase = ts_ms.rem_euclid(period_ms) as f64 / period_ms as f64;
        let value = match self.signal {
            Signal::Sine => self.min + span * 0.5 * (1.0 + (phase * std::f64::consts::TAU).sin()),
            Signal::Ramp => self.min + span * phase,
            Signal::Random => self.min + span * fastrand::f64(),
            Signal::Constant => self.value.unwrap_or(self.min),
        };
        // Six decimals keep payloads short without visible loss.
        (value * 1e6).round() / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;
    use crate::reading::Name;

    fn point(signal: Signal) -> SimulatedPoint {
        SimulatedPoint {
            name: Name::parse("p").unwrap(),
            signal,
            min: 10.0,
            max: 20.0,
            period: Duration::from_secs(60),
            value: None,
            deadband: None,
            aggregate: None,
            unit: None,
            homeassistant: Default::default(),
        }
    }

    #[test]
    fn sine_spans_min_to_max_over_a_period() {
        let p = point(Signal::Sine);
        assert_eq!(p.sample(0), 15.0);
        assert_eq!(p.sample(15_000), 20.0);
        assert_eq!(p.sample(45_000), 10.0);
        assert_eq!(p.sample(60_000), 15.0);
    }

    #[test]
    fn ramp_rises_then_restarts() {
        let p = point(Signal::Ramp);
        assert_eq!(p.sample(0), 10.0);
        assert_eq!(p.sample(30_000), 15.0);
        assert_eq!(p.sample(59_999), 19.999833);
        assert_eq!(p.sample(60_000), 10.0);
    }

    #[test]
    fn random_stays_in_range_and_constant_holds() {
        let p = point(Signal::Random);
        assert!((0..1000).all(|t| (10.0..=20.0).contains(&p.sample(t))));
        let mut c = point(Signal::Constant);
        assert_eq!(c.sample(123), 10.0);
        c.value = Some(42.5);
        assert_eq!(c.sample(123), 42.5);
    }
}
