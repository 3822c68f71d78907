//! GATT characteristic values: bytes ↔ a point value through the
//! characteristic's `skip`, `type`, `endian`, `scale` and `offset`.

use serde_json::Value;

use super::{DecodeError, error};
use crate::config::ble::{Characteristic, Endian, ValueType};

impl ValueType {
    pub fn size(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        }
    }

    fn is_integer(self) -> bool {
        self != ValueType::F32
    }

    /// The raw value's range.
    fn range(self) -> (f64, f64) {
        match self {
            ValueType::U8 => (0.0, u8::MAX.into()),
            ValueType::I8 => (i8::MIN.into(), i8::MAX.into()),
            ValueType::U16 => (0.0, u16::MAX.into()),
            ValueType::I16 => (i16::MIN.into(), i16::MAX.into()),
            ValueType::U32 => (0.0, u32::MAX.into()),
            ValueType::I32 => (i32::MIN.into(), i32::MAX.into()),
            ValueType::F32 => (f32::MIN.into(), f32::MAX.into()),
        }
    }
}

/// The point value of a characteristic's bytes.
pub fn decode(c: &Characteristic, data: &[u8]) -> Result<Value, DecodeError> {
    let size = c.value_type.size();
    let start = usize::from(c.skip);
    let Some(bytes) = data.get(start..start + size) else {
        return error(format!(
            "{} bytes from characteristic {}, expected at least {}",
            data.len(),
            c.uuid,
            start + size
        ));
    };
    let mut word = [0u8; 4];
    word[..size].copy_from_slice(bytes);
    if c.endian == Endian::Big {
        word[..size].reverse();
    }
    let raw: f64 = match c.value_type {
        ValueType::U8 => word[0].into(),
        ValueType::I8 => (word[0] as i8).into(),
        ValueType::U16 => u16::from_le_bytes([word[0], word[1]]).into(),
        ValueType::I16 => i16::from_le_bytes([word[0], word[1]]).into(),
        ValueType::U32 => u32::from_le_bytes(word).into(),
        ValueType::I32 => i32::from_le_bytes(word).into(),
        ValueType::F32 => f32::from_le_bytes(word).into(),
    };
    if !raw.is_finite() {
        return error(format!("characteristic {} holds {raw}", c.uuid));
    }
    if c.value_type.is_integer() && c.scale == 1.0 && c.offset == 0.0 {
        return Ok(Value::from(raw as i64));
    }
    let value = raw * c.scale + c.offset;
    // Nine significant decimals: no float noise from the scale.
    let value = (value * 1e9).round() / 1e9;
    Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
}

/// The bytes that make a characteristic hold `value` (for writes): the
/// inverse of [`decode`], refusing values the type cannot hold.
pub fn encode(c: &Characteristic, value: f64) -> Result<Vec<u8>, DecodeError> {
    let raw = (value - c.offset) / c.scale;
    let raw = if c.value_type.is_integer() {
        raw.round()
    } else {
        raw
    };
    let (min, max) = c.value_type.range();
    if !raw.is_finite() || raw < min || raw > max {
        let lo = min * c.scale + c.offset;
        let hi = max * c.scale + c.offset;
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        return error(format!(
            "{value} is out of range for {}: {lo} to {hi}",
            c.point
        ));
    }
    let mut bytes = match c.value_type {
        ValueType::U8 => vec![raw as u8],
        ValueType::I8 => vec![raw as i8 as u8],
        ValueType::U16 => (raw as u16).to_le_bytes().to_vec(),
        ValueType::I16 => (raw as i16).to_le_bytes().to_vec(),
        ValueType::U32 => (raw as u32).to_le_bytes().to_vec(),
        ValueType::I32 => (raw as i32).to_le_bytes().to_vec(),
        ValueType::F32 => (raw as f32).to_le_bytes().to_vec(),
    };
    if c.endian == Endian::Big {
        bytes.reverse();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ble::{BleUuid, Mode};
    use crate::reading::Name;
    use serde_json::json;

    fn characteristic(value_type: ValueType, endian: Endian) -> Characteristic {
        Characteristic {
            point: Name::parse("p").unwrap(),
            uuid: BleUuid::from_u16(0x2A6E),
            service: BleUuid::from_u16(0x181A),
            mode: Mode::Notify,
            value_type,
            endian,
            skip: 0,
            scale: 1.0,
            offset: 0.0,
            writable: false,
            deadband: None,
            aggregate: None,
        }
    }

    #[test]
    fn heart_rate_measurement_after_its_flags_byte() {
        let mut hr = characteristic(ValueType::U8, Endian::Little);
        hr.skip = 1;
        assert_eq!(decode(&hr, &[0x00, 72]).unwrap(), json!(72));
        assert!(decode(&hr, &[0x00]).is_err());
    }

    #[test]
    fn types_byte_orders_and_scaling() {
        // Environmental Sensing temperature 0x2A6E: i16, 0.01 °C.
        let mut t = characteristic(ValueType::I16, Endian::Little);
        t.scale = 0.01;
        assert_eq!(decode(&t, &[0xCA, 0x09]).unwrap(), json!(25.06));
        assert_eq!(decode(&t, &[0xFC, 0xFF]).unwrap(), json!(-0.04));
        let big = characteristic(ValueType::U16, Endian::Big);
        assert_eq!(decode(&big, &[0x01, 0x02]).unwrap(), json!(258));
        let i32le = characteristic(ValueType::I32, Endian::Little);
        assert_eq!(
            decode(&i32le, &[0xFE, 0xFF, 0xFF, 0xFF]).unwrap(),
            json!(-2)
        );
        let f = characteristic(ValueType::F32, Endian::Big);
        assert_eq!(decode(&f, &21.5f32.to_be_bytes()).unwrap(), json!(21.5));
        let mut k = characteristic(ValueType::U8, Endian::Little);
        k.offset = -40.0;
        assert_eq!(decode(&k, &[60]).unwrap(), json!(20.0));
        let nan = characteristic(ValueType::F32, Endian::Little);
        assert!(decode(&nan, &f32::NAN.to_le_bytes()).is_err());
    }

    #[test]
    fn encode_is_the_inverse_and_checks_the_range() {
        let mut t = characteristic(ValueType::I16, Endian::Big);
        t.scale = 0.1;
        let bytes = encode(&t, -12.3).unwrap();
        assert_eq!(bytes, (-123i16).to_be_bytes());
        assert_eq!(decode(&t, &bytes).unwrap(), json!(-12.3));
        let u8c = characteristic(ValueType::U8, Endian::Little);
        assert!(encode(&u8c, 256.0).unwrap_err().0.contains("0 to 255"));
        assert!(encode(&u8c, -1.0).is_err());
        assert!(encode(&u8c, f64::NAN).is_err());
        assert_eq!(encode(&u8c, 200.0).unwrap(), vec![200]);
    }
}
