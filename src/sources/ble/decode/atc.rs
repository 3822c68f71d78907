//! The ATC1441 format of the ATC_MiThermometer firmware: 13 bytes of
//! service data under UUID 0x181A, big-endian.
//!
//! | bytes | content |
//! |---|---|
//! | 0-5 | MAC, most significant byte first |
//! | 6-7 | temperature, i16, 0.1 °C |
//! | 8 | humidity, % |
//! | 9 | battery, % |
//! | 10-11 | battery, mV |
//! | 12 | frame counter (changes with each new measurement) |

use serde_json::{Map, Value};

use super::{DecodeError, Decoded, exact, scaled};

pub const LEN: usize = 13;

/// Decodes ATC1441 service data (the bytes after the UUID).
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    let d = exact::<LEN>(data, "ATC1441", (super::pvvx::LEN, "pvvx"))?;
    let mut values = Map::new();
    let temperature = i16::from_be_bytes([d[6], d[7]]);
    values.insert("temperature".into(), scaled(temperature.into(), 0.1));
    values.insert("humidity".into(), Value::from(d[8]));
    values.insert("battery".into(), Value::from(d[9]));
    let millivolts = u16::from_be_bytes([d[10], d[11]]);
    values.insert("battery_voltage".into(), scaled(millivolts.into(), 0.001));
    Ok(Decoded {
        values,
        counter: Some(d[12].into()),
        ..Decoded::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The firmware README's layout example, `0x0e, 0x16, 0x1a, 0x18,
    /// 00 00 00 00 00 00, aa aa, bb, cc, dd dd, 00`: placeholders, read here
    /// as the bytes they are.
    #[test]
    fn the_readmes_layout_example() {
        let d = decode(&[
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xAA, 0xAA, 0xBB, 0xCC, 0xDD, 0xDD, 0x00,
        ])
        .unwrap();
        assert_eq!(
            Value::Object(d.values),
            json!({"temperature": -2184.6, "humidity": 187, "battery": 204,
                   "battery_voltage": 56.797})
        );
        assert_eq!(d.counter, Some(0));
    }

    #[test]
    fn a_thermometer_at_21_5_degrees() {
        // A4:C1:38:8A:2E:42, 21.5 °C, 45 %, 87 %, 2967 mV, frame 18.
        let d = decode(&[
            0xA4, 0xC1, 0x38, 0x8A, 0x2E, 0x42, 0x00, 0xD7, 0x2D, 0x57, 0x0B, 0x97, 0x12,
        ])
        .unwrap();
        assert_eq!(
            Value::Object(d.values),
            json!({"temperature": 21.5, "humidity": 45, "battery": 87, "battery_voltage": 2.967})
        );
        assert_eq!(d.counter, Some(18));
        // Below zero: -4.2 °C.
        let cold = decode(&[0, 0, 0, 0, 0, 0, 0xFF, 0xD6, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(cold.values["temperature"], json!(-4.2));
    }

    #[test]
    fn other_lengths_are_refused_and_pvvx_is_named() {
        assert!(decode(&[]).is_err());
        assert!(
            decode(&[0; 15])
                .unwrap_err()
                .0
                .contains("set decoder: pvvx")
        );
    }
}
