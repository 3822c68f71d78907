//! RuuviTag manufacturer data (company id 0x0499), parsed by the
//! `ruuvi-sensor-protocol` crate: data format 5 (RAWv2) and the other
//! formats it reads (3, 6, E1). Values the tag marks as "not available"
//! are left out of the reading.

use ruuvi_sensor_protocol::{
    Acceleration, BatteryPotential, CarbonDioxide, Humidity, Luminosity, MacAddress,
    MeasurementSequenceNumber, MovementCounter, NitrogenOxides, ParticulateMatter, Pressure,
    SensorValues, Temperature, TransmitterPower, VolatileOrganicCompounds,
};
use serde_json::{Map, Value};

use super::{DecodeError, Decoded, RUUVI_MANUFACTURER_ID, scaled};

/// Decodes Ruuvi manufacturer data (the bytes after the company id).
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    let v = SensorValues::from_manufacturer_specific_data(RUUVI_MANUFACTURER_ID, data)
        .map_err(|e| DecodeError(format!("Ruuvi: {e}")))?;
    let mut values = Map::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            values.insert(name.to_owned(), value);
        }
    };
    let milli = |x: i64| scaled(x, 0.001);
    put(
        "temperature",
        v.temperature_as_millicelsius().map(|t| milli(t.into())),
    );
    put(
        "humidity",
        v.humidity_as_ppm().map(|h| scaled(h.into(), 0.0001)),
    );
    put(
        "pressure",
        v.pressure_as_pascals().map(|p| scaled(p.into(), 0.01)),
    );
    if let Some(a) = v.acceleration_vector_as_milli_g() {
        put("acceleration_x", Some(milli(a.0.into())));
        put("acceleration_y", Some(milli(a.1.into())));
        put("acceleration_z", Some(milli(a.2.into())));
    }
    put(
        "battery_voltage",
        v.battery_potential_as_millivolts().map(|b| milli(b.into())),
    );
    put("tx_power", v.tx_power_as_dbm().map(Value::from));
    put("movement_counter", v.movement_counter().map(Value::from));
    put(
        "measurement_sequence",
        v.measurement_sequence_number().map(Value::from),
    );
    put(
        "pm1_0",
        v.pm1_0_as_nanograms_per_cubic_meter()
            .map(|p| milli(p.into())),
    );
    put(
        "pm2_5",
        v.pm2_5_as_nanograms_per_cubic_meter()
            .map(|p| milli(p.into())),
    );
    put(
        "pm4_0",
        v.pm4_0_as_nanograms_per_cubic_meter()
            .map(|p| milli(p.into())),
    );
    put(
        "pm10",
        v.pm10_0_as_nanograms_per_cubic_meter()
            .map(|p| milli(p.into())),
    );
    put("co2", v.carbon_dioxide_as_ppm().map(Value::from));
    put("voc_index", v.voc_index().map(Value::from));
    put("nox_index", v.nox_index().map(Value::from));
    put(
        "illuminance",
        v.luminosity_as_millilux().map(|l| milli(l.into())),
    );
    put(
        "mac",
        v.mac_address().map(|m| {
            let hex: Vec<String> = m.iter().map(|b| format!("{b:02X}")).collect();
            Value::from(hex.join(":"))
        }),
    );
    Ok(Decoded {
        values,
        counter: v.measurement_sequence_number(),
        ..Decoded::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The test vectors of the data format 5 specification.
    #[test]
    fn format_5_valid_data() {
        let d = decode(&hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")).unwrap();
        assert_eq!(
            Value::Object(d.values),
            json!({
                "temperature": 24.3, "pressure": 1000.44, "humidity": 53.49,
                "acceleration_x": 0.004, "acceleration_y": -0.004, "acceleration_z": 1.036,
                "tx_power": 4, "battery_voltage": 2.977, "movement_counter": 66,
                "measurement_sequence": 205, "mac": "CB:B8:33:4C:88:4F"
            })
        );
        assert_eq!(d.counter, Some(205));
    }

    #[test]
    fn format_5_maximum_and_minimum_values() {
        let max = decode(&hex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")).unwrap();
        assert_eq!(
            Value::Object(max.values),
            json!({
                "temperature": 163.835, "pressure": 1155.34, "humidity": 163.835,
                "acceleration_x": 32.767, "acceleration_y": 32.767, "acceleration_z": 32.767,
                "tx_power": 20, "battery_voltage": 3.646, "movement_counter": 254,
                "measurement_sequence": 65534, "mac": "CB:B8:33:4C:88:4F"
            })
        );
        let min = decode(&hex("058001000000008001800180010000000000CBB8334C884F")).unwrap();
        assert_eq!(
            Value::Object(min.values),
            json!({
                "temperature": -163.835, "pressure": 500.0, "humidity": 0.0,
                "acceleration_x": -32.767, "acceleration_y": -32.767, "acceleration_z": -32.767,
                "tx_power": -40, "battery_voltage": 1.6, "movement_counter": 0,
                "measurement_sequence": 0, "mac": "CB:B8:33:4C:88:4F"
            })
        );
    }

    #[test]
    fn format_5_not_available_values_are_left_out() {
        let d = decode(&hex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")).unwrap();
        assert_eq!(d.values, Map::new());
        assert_eq!(d.counter, None);
    }

    #[test]
    fn other_data_is_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x07, 0x01]).unwrap_err().0.contains("version 7"));
        assert!(decode(&hex("0512FC5394")).unwrap_err().0.contains("length"));
    }
}
