//! How a point looks in Home Assistant: `homeassistant:` under a point,
//! and what is inferred when it is not given.

use serde::Deserialize;

/// `homeassistant: { device_class, state_class, name, icon }` of a point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityHints {
    /// Home Assistant's device class (`temperature`, `power`, ...);
    /// inferred from the unit when unset.
    #[serde(default)]
    pub device_class: Option<String>,
    /// `measurement`, `total` or `total_increasing`; numbers default to
    /// `measurement` (`total_increasing` for energy).
    #[serde(default)]
    pub state_class: Option<StateClass>,
    /// The entity's name; the point's name when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// An `mdi:` icon.
    #[serde(default)]
    pub icon: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateClass {
    Measurement,
    Total,
    TotalIncreasing,
}

impl StateClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StateClass::Measurement => "measurement",
            StateClass::Total => "total",
            StateClass::TotalIncreasing => "total_increasing",
        }
    }
}

/// The device class and state class a unit says without doubt: °C is a
/// temperature, kWh an energy that only grows. `None` for units that
/// could be several things (`%`: humidity, battery, a valve...).
pub fn infer(unit: &str) -> Option<(&'static str, StateClass)> {
    use StateClass::{Measurement, TotalIncreasing};
    Some(match unit {
        "°C" | "°F" | "K" => ("temperature", Measurement),
        "V" | "mV" | "kV" => ("voltage", Measurement),
        "A" | "mA" => ("current", Measurement),
        "W" | "kW" | "MW" => ("power", Measurement),
        "Wh" | "kWh" | "MWh" => ("energy", TotalIncreasing),
        "hPa" | "Pa" | "kPa" | "bar" | "mbar" | "psi" => ("pressure", Measurement),
        "lx" => ("illuminance", Measurement),
        "Hz" | "kHz" => ("frequency", Measurement),
        "VA" | "kVA" => ("apparent_power", Measurement),
        "var" | "kvar" => ("reactive_power", Measurement),
        "dBm" => ("signal_strength", Measurement),
        _ => return None,
    })
}

/// What a measurement a decoder names is, when its name says it (BLE
/// sensors: `temperature`, `humidity`, `battery`, ...): unit and device class.
pub fn known_measurement(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "temperature" => ("°C", "temperature"),
        "humidity" => ("%", "humidity"),
        "battery" => ("%", "battery"),
        "battery_voltage" | "voltage" => ("V", "voltage"),
        "pressure" => ("hPa", "pressure"),
        "illuminance" => ("lx", "illuminance"),
        "rssi" => ("dBm", "signal_strength"),
        "co2" => ("ppm", "carbon_dioxide"),
        "pm25" => ("µg/m³", "pm25"),
        "pm10" => ("µg/m³", "pm10"),
        "moisture" => ("%", "moisture"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_that_say_what_they_measure_are_inferred() {
        assert_eq!(infer("°C"), Some(("temperature", StateClass::Measurement)));
        assert_eq!(infer("kWh"), Some(("energy", StateClass::TotalIncreasing)));
        assert_eq!(infer("bar"), Some(("pressure", StateClass::Measurement)));
        assert_eq!(infer("%"), None, "humidity, battery or a valve");
        assert_eq!(known_measurement("humidity"), Some(("%", "humidity")));
        assert_eq!(known_measurement("acceleration_x"), None);
    }
}
