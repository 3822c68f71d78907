//! Register words and bits to point values and back: pure functions, so
//! that every type, word order and byte order is tested without a device,
//! and arbitrary words from the wire can be fuzzed.

use serde_json::{Number, Value};

pub use crate::config::modbus::{Order, RegisterKind, ValueType};

/// Where a point lives and how its raw words become a value: a point of the
/// configuration with every default resolved and the address made 0-based.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub register: RegisterKind,
    /// 0-based protocol address of the first register or bit.
    pub address: u16,
    pub value_type: ValueType,
    /// Registers of a string.
    pub length: u16,
    /// Order of the registers of a 32- or 64-bit value.
    pub word_order: Order,
    /// Order of the two bytes inside each register.
    pub byte_order: Order,
    /// One bit (0 = least significant) of a register.
    pub bit: Option<u8>,
    pub scale: f64,
    pub offset: f64,
}

/// What a read returned for a point's range.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    Words(&'a [u16]),
    Bits(&'a [bool]),
}

/// A write that carries a point's new value, in protocol terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Function 5.
    Coil { address: u16, value: bool },
    /// Function 6.
    Register { address: u16, value: u16 },
    /// Function 16.
    Registers { address: u16, values: Vec<u16> },
}

impl Layout {
    /// A layout with the defaults of `register` (bool for bits, u16 for
    /// registers), for tests and as a base to adjust.
    pub fn new(register: RegisterKind, address: u16, value_type: ValueType) -> Layout {
        Layout {
            register,
            address,
            value_type,
            length: 1,
            word_order: Order::Big,
            byte_order: Order::Big,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// Registers (or bits) the point spans.
    pub fn width(&self) -> u16 {
        if self.register.is_bits() {
            1
        } else if self.value_type == ValueType::String {
            self.length.max(1)
        } else {
            self.value_type.words()
        }
    }

    /// The point's value from the words or bits of its range (extra items
    /// at the end are ignored). Non-finite floats become `null`.
    pub fn decode(&self, raw: Raw<'_>) -> Result<Value, String> {
        let width = usize::from(self.width());
        match raw {
            Raw::Bits(bits) => match bits.first() {
                Some(bit) => Ok(Value::Bool(*bit)),
                None => Err("no bit in the answer".into()),
            },
            Raw::Words(words) if words.len() < width => Err(format!(
                "{} register(s) in the answer, {width} needed",
                words.len()
            )),
            Raw::Words(words) => Ok(self.decode_words(&words[..width])),
        }
    }

    fn decode_words(&self, words: &[u16]) -> Value {
        let bytes = self.bytes_of(words);
        let first = words.first().copied().unwrap_or_default();
        let word = self.swap(first);
        let raw = match self.value_type {
            ValueType::Bool => {
                let on = match self.bit {
                    Some(bit) => word.checked_shr(u32::from(bit)).unwrap_or(0) & 1 == 1,
                    None => word != 0,
                };
                return Value::Bool(on);
            }
            ValueType::String => return Value::String(text(&bytes)),
            ValueType::U16 => Number::from(word),
            ValueType::I16 => Number::from(word as i16),
            ValueType::U32 => Number::from(u32::from_be_bytes(array(&bytes))),
            ValueType::I32 => Number::from(i32::from_be_bytes(array(&bytes))),
            ValueType::U64 => Number::from(u64::from_be_bytes(array(&bytes))),
            ValueType::I64 => Number::from(i64::from_be_bytes(array(&bytes))),
            ValueType::F32 => {
                let x = f32::from_be_bytes(array(&bytes));
                // Through its shortest decimal form, so 230.1f32 is 230.1, not
                // 230.10000610351562.
                return self.scaled(x.to_string().parse().unwrap_or(f64::NAN));
            }
            ValueType::F64 => return self.scaled(f64::from_be_bytes(array(&bytes))),
        };
        if self.is_scaled() {
            self.scaled(raw.as_f64().unwrap_or(f64::NAN))
        } else {
            Value::Number(raw)
        }
    }

    fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// `raw * scale + offset`, without the float noise of the arithmetic.
    fn scaled(&self, raw: f64) -> Value {
        let x = if self.is_scaled() {
            tidy(raw * self.scale + self.offset)
        } else {
            raw
        };
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }

    fn swap(&self, word: u16) -> u16 {
        match self.byte_order {
            Order::Big => word,
            Order::Little => word.swap_bytes(),
        }
    }

    /// The value's bytes, most significant first (strings: in text order).
    fn bytes_of(&self, words: &[u16]) -> Vec<u8> {
        let mut ordered = words.to_vec();
        if self.word_order == Order::Little && self.value_type != ValueType::String {
            ordered.reverse();
        }
        ordered
            .into_iter()
            .flat_map(|w| self.swap(w).to_be_bytes())
            .collect()
    }

    fn words_of(&self, bytes: &[u8]) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|pair| {
                let high = pair.first().copied().unwrap_or_default();
                let low = pair.get(1).copied().unwrap_or_default();
                self.swap(u16::from_be_bytes([high, low]))
            })
            .collect();
        if self.word_order == Order::Little && self.value_type != ValueType::String {
            words.reverse();
        }
        words
    }

    /// The write that sets this point to `value` (an engineering value:
    /// scale and offset are undone). `min`/`max` are checked by the caller.
    pub fn encode(&self, value: &Value) -> Result<Write, String> {
        let address = self.address;
        if self.register == RegisterKind::Coil {
            let value = as_bool(value)?;
            return Ok(Write::Coil { address, value });
        }
        if self.register != RegisterKind::Holding {
            return Err(format!(
                "{} registers cannot be written",
                self.register.as_str()
            ));
        }
        if self.bit.is_some() {
            return Err("one bit of a register cannot be written".into());
        }
        let bytes: Vec<u8> = match self.value_type {
            ValueType::Bool => u16::from(as_bool(value)?).to_be_bytes().to_vec(),
            ValueType::String => {
                let text = value.as_str().ok_or("expected a string")?;
                let capacity = usize::from(self.width()) * 2;
                if text.len() > capacity {
                    return Err(format!("longer than {capacity} bytes"));
                }
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(capacity, 0);
                bytes
            }
            ValueType::F32 => {
                let raw = self.unscaled(value)?;
                let x = raw as f32;
                if !x.is_finite() {
                    return Err(format!("{raw} does not fit an f32"));
                }
                x.to_be_bytes().to_vec()
            }
            ValueType::F64 => self.unscaled(value)?.to_be_bytes().to_vec(),
            integer => {
                let raw = self.unscaled(value)?.round();
                let (bits, signed) = match integer {
                    ValueType::U16 => (16, false),
                    ValueType::I16 => (16, true),
                    ValueType::U32 => (32, false),
                    ValueType::I32 => (32, true),
                    ValueType::U64 => (64, false),
                    _ => (64, true),
                };
                integer_bytes(raw, bits, signed)
                    .ok_or_else(|| format!("{raw} is out of range for {integer:?}"))?
            }
        };
        let values = self.words_of(&bytes);
        match values.as_slice() {
            [value] => Ok(Write::Register {
                address,
                value: *value,
            }),
            _ => Ok(Write::Registers { address, values }),
        }
    }

    /// `(value - offset) / scale`, from a JSON number.
    fn unscaled(&self, value: &Value) -> Result<f64, String> {
        let x = value.as_f64().ok_or("expected a number")?;
        if !self.is_scaled() {
            return Ok(x);
        }
        let raw = (x - self.offset) / self.scale;
        if raw.is_finite() {
            Ok(tidy(raw))
        } else {
            Err(format!("{x} cannot be scaled"))
        }
    }
}

/// Rounds away the noise of float arithmetic (230.10000000000002 → 230.1)
/// by keeping 15 significant digits, all that an f64 holds for sure.
fn tidy(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{x:.14e}").parse().unwrap_or(x)
}

/// The first N bytes, zero-padded (callers pass the type's width).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

/// Text of a string register range: up to the first NUL, trailing spaces
/// dropped, invalid UTF-8 replaced.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned()
}

fn as_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        _ => Err("expected true, false, 0 or 1".into()),
    }
}

/// Big-endian bytes of an integral `raw` in a `bits`-wide integer, or
/// `None` when it does not fit.
fn integer_bytes(raw: f64, bits: u32, signed: bool) -> Option<Vec<u8>> {
    let (min, max) = if signed {
        (-(2f64.powi(bits as i32 - 1)), 2f64.powi(bits as i32 - 1))
    } else {
        (0.0, 2f64.powi(bits as i32))
    };
    // `max` itself is one past the largest value.
    if !(min..max).contains(&raw) {
        return None;
    }
    let bytes = if signed {
        (raw as i64).to_be_bytes()
    } else {
        (raw as u64).to_be_bytes()
    };
    Some(bytes[8 - bits as usize / 8..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn holding(value_type: ValueType) -> Layout {
        Layout::new(RegisterKind::Holding, 0, value_type)
    }

    fn ordered(value_type: ValueType, word_order: Order, byte_order: Order) -> Layout {
        Layout {
            word_order,
            byte_order,
            ..holding(value_type)
        }
    }

    fn decode(layout: &Layout, words: &[u16]) -> Value {
        layout.decode(Raw::Words(words)).unwrap()
    }

    use Order::{Big, Little};

    #[test]
    fn sixteen_bit_types() {
        assert_eq!(decode(&holding(ValueType::U16), &[0xFFFE]), json!(65534));
        assert_eq!(decode(&holding(ValueType::I16), &[0xFFFE]), json!(-2));
        let swapped = ordered(ValueType::U16, Big, Little);
        assert_eq!(decode(&swapped, &[0x3412]), json!(0x1234));
    }

    #[test]
    fn thirty_two_bit_types_in_all_four_orders() {
        // 0x12345678 as ABCD, CDAB, BADC and DCBA.
        let cases = [
            (Big, Big, [0x1234, 0x5678]),
            (Little, Big, [0x5678, 0x1234]),
            (Big, Little, [0x3412, 0x7856]),
            (Little, Little, [0x7856, 0x3412]),
        ];
        for (word, byte, words) in cases {
            let layout = ordered(ValueType::U32, word, byte);
            assert_eq!(
                decode(&layout, &words),
                json!(0x1234_5678),
                "{word:?} {byte:?}"
            );
        }
        // -123456 as i32, and 230.1 as f32, word-swapped.
        let i = (-123_456i32) as u32;
        let words = [(i & 0xFFFF) as u16, (i >> 16) as u16];
        assert_eq!(
            decode(&ordered(ValueType::I32, Little, Big), &words),
            json!(-123_456)
        );
        let f = 230.1f32.to_bits();
        let words = [(f & 0xFFFF) as u16, (f >> 16) as u16];
        assert_eq!(
            decode(&ordered(ValueType::F32, Little, Big), &words),
            json!(230.1)
        );
    }

    #[test]
    fn sixty_four_bit_types() {
        let words = [0x0123, 0x4567, 0x89AB, 0xCDEF];
        let reversed = [0xCDEF, 0x89AB, 0x4567, 0x0123];
        let value = json!(0x0123_4567_89AB_CDEFu64);
        assert_eq!(decode(&holding(ValueType::U64), &words), value);
        assert_eq!(
            decode(&ordered(ValueType::U64, Little, Big), &reversed),
            value
        );
        assert_eq!(decode(&holding(ValueType::I64), &[0xFFFF; 4]), json!(-1));
        let bits = (-1.5e300f64).to_bits();
        let words = [48, 32, 16, 0].map(|s| (bits >> s) as u16);
        assert_eq!(decode(&holding(ValueType::F64), &words), json!(-1.5e300));
    }

    #[test]
    fn scale_and_offset_apply_without_float_noise() {
        let layout = Layout {
            scale: 0.1,
            offset: -40.0,
            ..holding(ValueType::U16)
        };
        assert_eq!(decode(&layout, &[2301]), json!(190.1));
        let layout = Layout {
            scale: 0.001,
            ..holding(ValueType::I32)
        };
        assert_eq!(decode(&layout, &[0xFFFF, 0xFFFF]), json!(-0.001));
    }

    #[test]
    fn bits_strings_and_nan() {
        let bit = |n| Layout {
            bit: Some(n),
            ..holding(ValueType::Bool)
        };
        assert_eq!(decode(&bit(0), &[0b101]), json!(true));
        assert_eq!(decode(&bit(1), &[0b101]), json!(false));
        assert_eq!(decode(&bit(15), &[0x8000]), json!(true));
        assert_eq!(decode(&holding(ValueType::Bool), &[7]), json!(true));

        let string = Layout {
            length: 3,
            ..holding(ValueType::String)
        };
        let words = [
            u16::from_be_bytes(*b"SD"),
            u16::from_be_bytes(*b"M6"),
            0x2000,
        ];
        assert_eq!(decode(&string, &words), json!("SDM6"));
        let swapped = Layout {
            byte_order: Little,
            ..string.clone()
        };
        let words = [u16::from_le_bytes(*b"SD"), u16::from_le_bytes(*b"M "), 0];
        assert_eq!(decode(&swapped, &words), json!("SDM"));

        let nan = f32::NAN.to_bits();
        let words = [(nan >> 16) as u16, nan as u16];
        assert_eq!(decode(&holding(ValueType::F32), &words), Value::Null);

        let coil = Layout::new(RegisterKind::Coil, 3, ValueType::Bool);
        assert_eq!(coil.decode(Raw::Bits(&[true])).unwrap(), json!(true));
        assert!(coil.decode(Raw::Bits(&[])).is_err());
        assert!(holding(ValueType::U32).decode(Raw::Words(&[1])).is_err());
    }

    #[test]
    fn encode_picks_the_function_and_undoes_scale() {
        let coil = Layout::new(RegisterKind::Coil, 7, ValueType::Bool);
        let on = Write::Coil {
            address: 7,
            value: true,
        };
        assert_eq!(coil.encode(&json!(true)), Ok(on.clone()));
        assert_eq!(coil.encode(&json!(1)), Ok(on));
        assert!(coil.encode(&json!(2)).is_err());

        let setpoint = Layout {
            address: 10,
            scale: 0.1,
            ..holding(ValueType::I16)
        };
        let written = |value: u16| Write::Register { address: 10, value };
        assert_eq!(setpoint.encode(&json!(21.5)), Ok(written(215)));
        assert_eq!(setpoint.encode(&json!(-0.1)), Ok(written(0xFFFF)));
        assert!(setpoint.encode(&json!(3276.8)).is_err(), "out of i16");
        assert!(setpoint.encode(&json!("warm")).is_err());

        let float = ordered(ValueType::F32, Little, Big);
        let bits = 21.5f32.to_bits();
        assert_eq!(
            float.encode(&json!(21.5)),
            Ok(Write::Registers {
                address: 0,
                values: vec![bits as u16, (bits >> 16) as u16]
            })
        );
        let input = Layout::new(RegisterKind::Input, 0, ValueType::U16);
        assert!(input.encode(&json!(1)).is_err());
        let string = Layout {
            length: 2,
            ..holding(ValueType::String)
        };
        assert!(string.encode(&json!("toolong")).is_err());
    }

    fn any_type() -> impl Strategy<Value = ValueType> {
        prop_oneof![
            Just(ValueType::Bool),
            Just(ValueType::U16),
            Just(ValueType::I16),
            Just(ValueType::U32),
            Just(ValueType::I32),
            Just(ValueType::U64),
            Just(ValueType::I64),
            Just(ValueType::F32),
            Just(ValueType::F64),
            Just(ValueType::String),
        ]
    }

    fn any_order() -> impl Strategy<Value = Order> {
        prop_oneof![Just(Big), Just(Little)]
    }

    prop_compose! {
        fn any_layout()(
            value_type in any_type(),
            word_order in any_order(),
            byte_order in any_order(),
            length in 0u16..130,
            bit in proptest::option::of(0u8..=255),
            scale in prop_oneof![Just(1.0), any::<f64>()],
            offset in prop_oneof![Just(0.0), any::<f64>()],
        ) -> Layout {
            Layout { length, word_order, byte_order, bit, scale, offset, ..holding(value_type) }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_words_never_panic(layout in any_layout(), words in proptest::collection::vec(any::<u16>(), 0..140)) {
            let _ = layout.decode(Raw::Words(&words));
        }

        #[test]
        fn arbitrary_values_never_panic(layout in any_layout(), x in any::<f64>(), s in ".{0,300}") {
            let _ = layout.encode(&json!(x));
            let _ = layout.encode(&json!(s));
        }

        #[test]
        fn integers_round_trip_in_every_order(
            value_type in prop_oneof![Just(ValueType::U16), Just(ValueType::I16), Just(ValueType::U32), Just(ValueType::I32), Just(ValueType::I64)],
            word_order in any_order(),
            byte_order in any_order(),
            seed in any::<i64>(),
        ) {
            let layout = ordered(value_type, word_order, byte_order);
            let value = match value_type {
                ValueType::U16 => json!(seed as u16),
                ValueType::I16 => json!(seed as i16),
                ValueType::U32 => json!(seed as u32),
                ValueType::I32 => json!(seed as i32),
                _ => json!(seed >> 12), // exact in an f64
            };
            let words = match layout.encode(&value).unwrap() {
                Write::Register { value, .. } => vec![value],
                Write::Registers { values, .. } => values,
                Write::Coil { .. } => unreachable!(),
            };
            prop_assert_eq!(decode(&layout, &words), value);
        }

        #[test]
        fn floats_round_trip_in_every_order(word_order in any_order(), byte_order in any_order(), x in -1e30f64..1e30) {
            let layout = ordered(ValueType::F64, word_order, byte_order);
            let Write::Registers { values, .. } = layout.encode(&json!(x)).unwrap() else {
                panic!("an f64 takes four registers");
            };
            prop_assert_eq!(decode(&layout, &values), json!(x));
        }
    }
}
