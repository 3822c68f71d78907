//! Human-friendly units in the config file: durations such as `500ms`, `5s`,
//! `7d` and sizes such as `512MiB`. A bare number is refused on purpose:
//! `flush_interval: 200` could mean seconds or milliseconds.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer};
use serde::{Serialize, Serializer};

/// A duration written with its unit: `ms`, `s`, `m`, `h`, `d` or `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// A size in bytes written with its unit: `B`, `kB`/`KiB`, `MB`/`MiB`,
/// `GB`/`GiB`, `TB`/`TiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1_000),
    ("KB", 1_000),
    ("KiB", 1 << 10),
    ("MB", 1_000_000),
    ("MiB", 1 << 20),
    ("GB", 1_000_000_000),
    ("GiB", 1 << 30),
    ("TB", 1_000_000_000_000),
    ("TiB", 1 << 40),
];

const DURATION_EXPECTED: &str = "a duration such as 500ms, 5s, 2m, 1h or 7d";
const SIZE_EXPECTED: &str = "a size such as 64KiB, 512MiB or 2GB";

/// Splits `12.5MiB` into (12.5, "MiB"), tolerating a space before the unit.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..end].parse().ok()?;
    Some((number, text[end..].trim_start()))
}

fn parse_with_units(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    let (_, factor) = units.iter().find(|(name, _)| *name == unit)?;
    let value = number * *factor as f64;
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then_some(value.round() as u64)
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_with_units(text, DURATION_UNITS)
            .map(|ms| Duration(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("invalid duration `{text}`, expected {DURATION_EXPECTED}"))
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_with_units(text, SIZE_UNITS)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size `{text}`, expected {SIZE_EXPECTED}"))
    }
}

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        // Largest unit that divides exactly, so `90s` stays `90s`.
        let (name, factor) = DURATION_UNITS
            .iter()
            .rev()
            .find(|(_, factor)| ms != 0 && ms.is_multiple_of(*factor))
            .unwrap_or(&("ms", 1));
        write!(f, "{}{name}", ms / factor)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, factor) = ["TiB", "GiB", "MiB", "KiB"]
            .iter()
            .zip([1u64 << 40, 1 << 30, 1 << 20, 1 << 10])
            .find(|(_, factor)| self.0 != 0 && self.0.is_multiple_of(*factor))
            .unwrap_or((&"B", 1));
        write!(f, "{}{name}", self.0 / factor)
    }
}

/// Both types read from a string only; the visitor names what was expected.
struct UnitVisitor<T>(&'static str, std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> de::Visitor<'_> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(UnitVisitor(DURATION_EXPECTED, std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(UnitVisitor(SIZE_EXPECTED, std::marker::PhantomData))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        let ms = |t: &str| t.parse::<Duration>().map(|d| d.0.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("5s"), Ok(5_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("7d"), Ok(604_800_000));
        assert_eq!(ms("1w"), Ok(604_800_000));
    }

    #[test]
    fn durations_without_or_with_unknown_units_are_refused() {
        for bad in ["200", "5 parsecs", "", "s", "-1s", "1e3s"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.contains("expected a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("2GB".parse(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("64 KiB".parse(), Ok(ByteSize(64 << 10)));
        assert!("512".parse::<ByteSize>().is_err());
        assert!("12 furlongs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["500ms", "90s", "2m", "3d", "1w"] {
            assert_eq!(text.parse::<Duration>().unwrap().to_string(), text);
        }
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().to_string(), "512MiB");
    }
}
