//! The pvvx custom format of the ATC_MiThermometer firmware: 15 bytes of
//! service data under UUID 0x181A, little-endian.
//!
//! | bytes | content |
//! |---|---|
//! | 0-5 | MAC, least significant byte first |
//! | 6-7 | temperature, i16, 0.01 °C |
//! | 8-9 | humidity, u16, 0.01 % |
//! | 10-11 | battery, mV |
//! | 12 | battery, % |
//! | 13 | measurement counter |
//! | 14 | flags: bit 0 reed switch, bit 1 GPIO_TRG output, bit 3 temperature trigger, bit 4 humidity trigger |

use serde_json::{Map, Value};

use super::{DecodeError, Decoded, exact, scaled};

pub const LEN: usize = 15;

/// Decodes pvvx custom service data (the bytes after the UUID).
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    let d = exact::<LEN>(data, "pvvx", (super::atc::LEN, "atc"))?;
    let mut values = Map::new();
    let temperature = i16::from_le_bytes([d[6], d[7]]);
    values.insert("temperature".into(), scaled(temperature.into(), 0.01));
    let humidity = u16::from_le_bytes([d[8], d[9]]);
    values.insert("humidity".into(), scaled(humidity.into(), 0.01));
    let millivolts = u16::from_le_bytes([d[10], d[11]]);
    values.insert("battery_voltage".into(), scaled(millivolts.into(), 0.001));
    values.insert("battery".into(), Value::from(d[12]));
    let flags = d[14];
    values.insert("reed_switch".into(), Value::Bool(flags & 0x01 != 0));
    values.insert("gpio_trigger".into(), Value::Bool(flags & 0x02 != 0));
    values.insert("temperature_trigger".into(), Value::Bool(flags & 0x08 != 0));
    values.insert("humidity_trigger".into(), Value::Bool(flags & 0x10 != 0));
    Ok(Decoded {
        values,
        counter: Some(d[13].into()),
        ..Decoded::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A LYWSD03MMC (A4:C1:38:C6:77:14) below zero, as quoted by the
    /// firmware's author in its issue tracker (issue 13):
    /// `1477c638c1a4 fcff da1c d10a 3f 9d 0d` is -0.04 °C, 73.86 %, 2769 mV,
    /// 63 %, measurement 157, flags 0x0d.
    #[test]
    fn the_published_example() {
        let d = decode(&[
            0x14, 0x77, 0xC6, 0x38, 0xC1, 0xA4, 0xFC, 0xFF, 0xDA, 0x1C, 0xD1, 0x0A, 0x3F, 0x9D,
            0x0D,
        ])
        .unwrap();
        assert_eq!(
            Value::Object(d.values),
            json!({"temperature": -0.04, "humidity": 73.86, "battery_voltage": 2.769,
                   "battery": 63, "reed_switch": true, "gpio_trigger": false,
                   "temperature_trigger": true, "humidity_trigger": false})
        );
        assert_eq!(d.counter, Some(157));
    }

    #[test]
    fn other_lengths_are_refused_and_atc_is_named() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0; 13]).unwrap_err().0.contains("set decoder: atc"));
    }
}
