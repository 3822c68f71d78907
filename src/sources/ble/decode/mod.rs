//! Advertisement and characteristic decoders: pure functions from bytes to
//! point values, one file per format, none of which may panic on any input.

pub mod atc;
pub mod bthome;
pub mod pvvx;
pub mod ruuvi;
pub mod value;

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::ble::{BleUuid, Decoder};

/// Service data UUID of BTHome.
pub const BTHOME_UUID: BleUuid = BleUuid::from_u16(0xFCD2);
/// Service data UUID of the ATC_MiThermometer formats (Environmental Sensing).
pub const ENVIRONMENTAL_SENSING_UUID: BleUuid = BleUuid::from_u16(0x181A);
/// Manufacturer id of Ruuvi Innovations.
pub const RUUVI_MANUFACTURER_ID: u16 = 0x0499;

/// What one advertisement said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// Point name → value.
    pub values: Map<String, Value>,
    /// The format's packet id or measurement counter: the same counter again
    /// is a repeat of the same measurement.
    pub counter: Option<u32>,
    /// An encrypted advertisement's counter and MIC, for the replay check.
    pub sealed: Option<Sealed>,
}

/// What identifies one encrypted advertisement: its counter (which must
/// go up) and its MIC (the same counter and MIC again is the same
/// advertisement received twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub counter: u32,
    pub mic: [u8; 4],
}

/// Why an advertisement could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

pub(crate) fn error<T>(message: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(message.into()))
}

/// `data` as exactly `N` bytes of `format`, or an error that names the
/// other format of service data 0x181A when the length is that one's.
pub(crate) fn exact<'a, const N: usize>(
    data: &'a [u8],
    format: &str,
    other: (usize, &str),
) -> Result<&'a [u8; N], DecodeError> {
    <&[u8; N]>::try_from(data).or_else(|_| {
        let (other_len, other_decoder) = other;
        let hint = if data.len() == other_len {
            format!(" ({other_len} bytes is the other format: set decoder: {other_decoder})")
        } else {
            String::new()
        };
        error(format!(
            "{format} data has {N} bytes, got {}{hint}",
            data.len()
        ))
    })
}

/// Decodes the part of an advertisement that `decoder` reads: `None` when
/// the advertisement does not carry it (other service data, say).
/// `encryption` is the key of a BTHome device that has one.
pub fn decode_advert(
    decoder: Decoder,
    manufacturer_data: &HashMap<u16, Vec<u8>>,
    service_data: &HashMap<Uuid, Vec<u8>>,
    encryption: Option<bthome::Encryption<'_>>,
) -> Option<Result<Decoded, DecodeError>> {
    let service = |uuid: BleUuid| service_data.get(&uuid.0);
    match decoder {
        Decoder::Bthome => service(BTHOME_UUID).map(|d| bthome::decode_with(d, encryption)),
        Decoder::Ruuvi => manufacturer_data
            .get(&RUUVI_MANUFACTURER_ID)
            .map(|d| ruuvi::decode(d)),
        Decoder::Atc => service(ENVIRONMENTAL_SENSING_UUID).map(|d| atc::decode(d)),
        Decoder::Pvvx => service(ENVIRONMENTAL_SENSING_UUID).map(|d| pvvx::decode(d)),
        Decoder::Gatt => None,
    }
}

/// Every advertisement decoder that reads this advertisement, with what it
/// read (for `fieldgate ble scan`).
pub fn decode_any(
    manufacturer_data: &HashMap<u16, Vec<u8>>,
    service_data: &HashMap<Uuid, Vec<u8>>,
) -> Vec<(Decoder, Decoded)> {
    [Decoder::Bthome, Decoder::Ruuvi, Decoder::Atc, Decoder::Pvvx]
        .into_iter()
        .filter_map(
            |d| match decode_advert(d, manufacturer_data, service_data, None) {
                Some(Ok(decoded)) => Some((d, decoded)),
                _ => None,
            },
        )
        .collect()
}

/// `raw × factor`, rounded to the decimals of `factor` so that 2506 × 0.01
/// is 25.06 and not 25.060000000000002; a whole number stays an integer.
pub(crate) fn scaled(raw: i64, factor: f64) -> Value {
    if factor == 1.0 {
        return Value::from(raw);
    }
    let mut decimals = 0;
    while decimals < 9 && (factor * 10f64.powi(decimals)).fract().abs() > 1e-9 {
        decimals += 1;
    }
    let unit = 10f64.powi(decimals);
    Value::from((raw as f64 * factor * unit).round() / unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_the_decimals_of_the_factor() {
        assert_eq!(scaled(2506, 0.01), Value::from(25.06));
        assert_eq!(scaled(-4, 0.01), Value::from(-0.04));
        assert_eq!(scaled(1, 0.35), Value::from(0.35));
        assert_eq!(scaled(42, 1.0), Value::from(42));
        assert_eq!(scaled(13390, 0.001), Value::from(13.39));
    }

    #[test]
    fn an_advert_without_the_decoders_data_is_not_an_error() {
        let none = HashMap::new();
        let other = HashMap::from([(BleUuid::from_u16(0xFE95).0, vec![1, 2, 3])]);
        assert_eq!(decode_advert(Decoder::Bthome, &none, &other, None), None);
        assert_eq!(decode_advert(Decoder::Ruuvi, &none, &other, None), None);
        assert!(decode_any(&none, &other).is_empty());
        let bthome = HashMap::from([(BTHOME_UUID.0, vec![0x40, 0x02, 0xC4, 0x09])]);
        let found = decode_any(&none, &bthome);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Decoder::Bthome);
    }

    mod never_panic {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn bthome(data in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = bthome::decode(&data);
            }

            /// Encrypted, with a key: the MIC check and the trailer split.
            #[test]
            fn bthome_encrypted(data in proptest::collection::vec(any::<u8>(), 0..64), info in prop_oneof![Just(0x41u8), Just(0x45u8)]) {
                let key = crate::config::ble::BindKey::new([1; 16]);
                let encryption = bthome::Encryption { key: &key, mac: [1, 2, 3, 4, 5, 6] };
                let data = [&[info], data.as_slice()].concat();
                prop_assert!(bthome::decode_with(&data, Some(encryption)).is_err());
            }

            /// With a valid header, so that the object table is exercised.
            #[test]
            fn bthome_objects(data in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = bthome::decode(&[&[0x40], data.as_slice()].concat());
            }

            #[test]
            fn ruuvi(data in proptest::collection::vec(any::<u8>(), 0..40)) {
                let _ = ruuvi::decode(&data);
                let _ = ruuvi::decode(&[&[0x05], data.as_slice()].concat());
            }

            #[test]
            fn atc_and_pvvx(data in proptest::collection::vec(any::<u8>(), 0..20)) {
                let _ = atc::decode(&data);
                let _ = pvvx::decode(&data);
            }

            /// Exact lengths always decode.
            #[test]
            fn atc_and_pvvx_of_their_length(atc in any::<[u8; 13]>(), pvvx in any::<[u8; 15]>()) {
                prop_assert!(atc::decode(&atc).is_ok());
                prop_assert!(pvvx::decode(&pvvx).is_ok());
            }

            #[test]
            fn any_advert(
                company in any::<u16>(),
                data in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let m = HashMap::from([(company, data.clone()), (RUUVI_MANUFACTURER_ID, data.clone())]);
                let s = HashMap::from([(BTHOME_UUID.0, data.clone()), (ENVIRONMENTAL_SENSING_UUID.0, data)]);
                let _ = decode_any(&m, &s);
            }
        }
    }
}
