//! BTHome v2 (<https://bthome.io/format/>): service data under UUID 0xFCD2.
//!
//! The first byte is the device information (bit 0 encryption, bit 2
//! trigger based, bits 5-7 the version, 2), then objects follow, each an
//! object id and a little-endian value whose size the id implies. An
//! object id that appears more than once is a second sensor of the same
//! kind: `temperature`, `temperature_2`, … Packet id 0x00 is the repeat
//! counter.
//!
//! Encrypted advertisements (<https://bthome.io/encryption/>) carry the
//! objects AES-CCM encrypted, then a 4-byte counter and a 4-byte MIC; the
//! nonce is the device's address, the UUID (`D2 FC`), the device
//! information byte and the counter. Whether the counter goes up is the
//! receiver's business: the device state checks it.

use aes::Aes128;
use ccm::Ccm;
use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U4, U13};
use serde_json::{Map, Value};

use super::{DecodeError, Decoded, Sealed, error, scaled};
use crate::config::ble::BindKey;

/// AES-128-CCM with the 4-byte MIC and 13-byte nonce of BTHome.
type Cipher = Ccm<Aes128, U4, U13>;

/// What an encrypted advertisement is opened with: the device's key and
/// the address it advertises from (part of the nonce).
#[derive(Clone, Copy)]
pub struct Encryption<'a> {
    pub key: &'a BindKey,
    pub mac: [u8; 6],
}

/// How an object's value is stored.
#[derive(Clone, Copy)]
enum Kind {
    /// Little-endian integer of `size` bytes, times `factor`.
    Number {
        size: usize,
        signed: bool,
        factor: f64,
    },
    /// One byte, 0 or 1.
    Binary,
    /// Button event (one byte).
    Button,
    /// Dimmer event: direction byte and steps byte.
    Dimmer,
    /// Length byte, then UTF-8.
    Text,
    /// Length byte, then bytes (published as hex).
    Raw,
    /// Device information that is not a measurement, skipped.
    Skip(usize),
}

use Kind::*;

const fn n(size: usize, factor: f64) -> Kind {
    Number {
        size,
        signed: false,
        factor,
    }
}

const fn s(size: usize, factor: f64) -> Kind {
    Number {
        size,
        signed: true,
        factor,
    }
}

/// The object ids of the BTHome v2 sensor, binary sensor and event tables:
/// (id, point name, encoding).
const OBJECTS: &[(u8, &str, Kind)] = &[
    (0x00, "packet_id", n(1, 1.0)),
    (0x01, "battery", n(1, 1.0)),
    (0x02, "temperature", s(2, 0.01)),
    (0x03, "humidity", n(2, 0.01)),
    (0x04, "pressure", n(3, 0.01)),
    (0x05, "illuminance", n(3, 0.01)),
    (0x06, "mass_kg", n(2, 0.01)),
    (0x07, "mass_lb", n(2, 0.01)),
    (0x08, "dewpoint", s(2, 0.01)),
    (0x09, "count", n(1, 1.0)),
    (0x0A, "energy", n(3, 0.001)),
    (0x0B, "power", n(3, 0.01)),
    (0x0C, "voltage", n(2, 0.001)),
    (0x0D, "pm2_5", n(2, 1.0)),
    (0x0E, "pm10", n(2, 1.0)),
    (0x0F, "generic_boolean", Binary),
    (0x10, "power_on", Binary),
    (0x11, "opening", Binary),
    (0x12, "co2", n(2, 1.0)),
    (0x13, "tvoc", n(2, 1.0)),
    (0x14, "moisture", n(2, 0.01)),
    (0x15, "battery_low", Binary),
    (0x16, "battery_charging", Binary),
    (0x17, "carbon_monoxide", Binary),
    (0x18, "cold", Binary),
    (0x19, "connectivity", Binary),
    (0x1A, "door", Binary),
    (0x1B, "garage_door", Binary),
    (0x1C, "gas_detected", Binary),
    (0x1D, "heat", Binary),
    (0x1E, "light", Binary),
    (0x1F, "lock", Binary),
    (0x20, "moisture_detected", Binary),
    (0x21, "motion", Binary),
    (0x22, "moving", Binary),
    (0x23, "occupancy", Binary),
    (0x24, "plug", Binary),
    (0x25, "presence", Binary),
    (0x26, "problem", Binary),
    (0x27, "running", Binary),
    (0x28, "safety", Binary),
    (0x29, "smoke", Binary),
    (0x2A, "sound", Binary),
    (0x2B, "tamper", Binary),
    (0x2C, "vibration", Binary),
    (0x2D, "window", Binary),
    (0x2E, "humidity", n(1, 1.0)),
    (0x2F, "moisture", n(1, 1.0)),
    (0x3A, "button", Button),
    (0x3C, "dimmer", Dimmer),
    (0x3D, "count", n(2, 1.0)),
    (0x3E, "count", n(4, 1.0)),
    (0x3F, "rotation", s(2, 0.1)),
    (0x40, "distance_mm", n(2, 1.0)),
    (0x41, "distance_m", n(2, 0.1)),
    (0x42, "duration", n(3, 0.001)),
    (0x43, "current", n(2, 0.001)),
    (0x44, "speed", n(2, 0.01)),
    (0x45, "temperature", s(2, 0.1)),
    (0x46, "uv_index", n(1, 0.1)),
    (0x47, "volume", n(2, 0.1)),
    (0x48, "volume_ml", n(2, 1.0)),
    (0x49, "volume_flow_rate", n(2, 0.001)),
    (0x4A, "voltage", n(2, 0.1)),
    (0x4B, "gas", n(3, 0.001)),
    (0x4C, "gas", n(4, 0.001)),
    (0x4D, "energy", n(4, 0.001)),
    (0x4E, "volume", n(4, 0.001)),
    (0x4F, "water", n(4, 0.001)),
    (0x50, "timestamp", n(4, 1.0)),
    (0x51, "acceleration", n(2, 0.001)),
    (0x52, "gyroscope", n(2, 0.001)),
    (0x53, "text", Text),
    (0x54, "raw", Raw),
    (0x55, "volume_storage", n(4, 0.001)),
    (0x56, "conductivity", n(2, 1.0)),
    (0x57, "temperature", s(1, 1.0)),
    (0x58, "temperature", s(1, 0.35)),
    (0x59, "count", s(1, 1.0)),
    (0x5A, "count", s(2, 1.0)),
    (0x5B, "count", s(4, 1.0)),
    (0x5C, "power", s(4, 0.01)),
    (0x5D, "current", s(2, 0.001)),
    (0x5E, "direction", n(2, 0.01)),
    (0x5F, "precipitation", n(2, 0.1)),
    (0x60, "channel", n(1, 1.0)),
    (0x61, "rotational_speed", n(2, 1.0)),
    (0xF0, "device_type", Skip(2)),
    (0xF1, "firmware", Skip(4)),
    (0xF2, "firmware", Skip(3)),
];

const BUTTON_EVENTS: &[&str] = &[
    "none",
    "press",
    "double_press",
    "triple_press",
    "long_press",
    "long_double_press",
    "long_triple_press",
];

/// Decodes unencrypted BTHome v2 service data (the bytes after the UUID).
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    decode_with(data, None)
}

/// Decodes BTHome v2 service data; with `encryption`, of a device that has
/// a bindkey, which must send encrypted advertisements only (anyone in
/// range could send an unencrypted one in its name).
pub fn decode_with(
    data: &[u8],
    encryption: Option<Encryption<'_>>,
) -> Result<Decoded, DecodeError> {
    let Some((&info, rest)) = data.split_first() else {
        return error("empty BTHome service data");
    };
    let version = info >> 5;
    if version != 2 {
        return error(format!("BTHome version {version}, only version 2 is read"));
    }
    let encrypted = info & 0x01 != 0;
    match (encrypted, encryption) {
        (false, None) => objects(rest, Decoded::default()),
        (false, Some(_)) => {
            error("unencrypted BTHome advertisement from a device with a bindkey (refused)")
        }
        (true, None) => error("encrypted BTHome advertisement: set the device's bindkey"),
        (true, Some(encryption)) => {
            let (plain, sealed) = open(info, rest, encryption)?;
            let decoded = Decoded {
                sealed: Some(sealed),
                ..Decoded::default()
            };
            objects(&plain, decoded)
        }
    }
}

/// Decrypts and authenticates the bytes after the device information
/// byte: the objects, then the counter and the MIC.
fn open(
    info: u8,
    data: &[u8],
    encryption: Encryption<'_>,
) -> Result<(Vec<u8>, Sealed), DecodeError> {
    let Some(split) = data.len().checked_sub(8) else {
        return error(format!(
            "encrypted BTHome data has {} bytes after the device information, at least 8 (counter and MIC) expected",
            data.len()
        ));
    };
    let (ciphertext, trailer) = data.split_at(split);
    let (counter, mic) = trailer.split_at(4);
    let mut nonce = [0u8; 13];
    nonce[..6].copy_from_slice(&encryption.mac);
    nonce[6..8].copy_from_slice(&[0xD2, 0xFC]);
    nonce[8] = info;
    nonce[9..].copy_from_slice(counter);
    let cipher = Cipher::new(GenericArray::from_slice(encryption.key.bytes()));
    let mut plain = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            GenericArray::from_slice(&nonce),
            &[],
            &mut plain,
            GenericArray::from_slice(mic),
        )
        // The key is never part of the message.
        .map_err(|_| {
            DecodeError(
                "BTHome MIC check failed: wrong bindkey, or an altered advertisement".into(),
            )
        })?;
    let sealed = Sealed {
        counter: u32::from_le_bytes([counter[0], counter[1], counter[2], counter[3]]),
        mic: [mic[0], mic[1], mic[2], mic[3]],
    };
    Ok((plain, sealed))
}

/// The objects of an advertisement, added to `decoded`.
fn objects(mut rest: &[u8], mut decoded: Decoded) -> Result<Decoded, DecodeError> {
    while let Some((&id, after_id)) = rest.split_first() {
        let Some(&(_, name, kind)) = OBJECTS.iter().find(|(oid, _, _)| *oid == id) else {
            // Sizes are implied by ids: after an unknown id nothing can be read.
            if decoded.values.is_empty() {
                return error(format!("unknown BTHome object id {id:#04x}"));
            }
            break;
        };
        let (value, used) = read(kind, after_id)
            .ok_or_else(|| DecodeError(format!("BTHome object {id:#04x} ({name}) is cut short")))?;
        rest = &after_id[used..];
        match value {
            Some(value) if id == 0x00 => decoded.counter = value.as_u64().map(|v| v as u32),
            Some(value) => insert(&mut decoded.values, name, value),
            None => {}
        }
    }
    Ok(decoded)
}

/// A value and the bytes it took; `None` when the data is too short.
fn read(kind: Kind, data: &[u8]) -> Option<(Option<Value>, usize)> {
    Some(match kind {
        Number {
            size,
            signed,
            factor,
        } => {
            let bytes = data.get(..size)?;
            let mut raw: u64 = 0;
            for (i, b) in bytes.iter().enumerate() {
                raw |= u64::from(*b) << (8 * i);
            }
            let raw = if signed {
                let shift = 64 - 8 * size as u32;
                ((raw << shift) as i64) >> shift
            } else {
                raw as i64
            };
            (Some(scaled(raw, factor)), size)
        }
        Binary => (Some(Value::Bool(*data.first()? != 0)), 1),
        Button => {
            let event = *data.first()?;
            let name = match event {
                0x80 => "hold_press",
                e => BUTTON_EVENTS
                    .get(usize::from(e))
                    .copied()
                    .unwrap_or("unknown"),
            };
            (Some(Value::from(name)), 1)
        }
        Dimmer => {
            let (direction, steps) = (*data.first()?, i64::from(*data.get(1)?));
            let steps = match direction {
                1 => -steps,
                2 => steps,
                _ => 0,
            };
            (Some(Value::from(steps)), 2)
        }
        Text | Raw => {
            let len = usize::from(*data.first()?);
            let bytes = data.get(1..1 + len)?;
            let value = if matches!(kind, Text) {
                Value::from(String::from_utf8_lossy(bytes).into_owned())
            } else {
                Value::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
            };
            (Some(value), 1 + len)
        }
        Skip(size) => {
            data.get(..size)?;
            (None, size)
        }
    })
}

/// Inserts `name`, or `name_2`, `name_3`, … when a sensor repeats.
fn insert(values: &mut Map<String, Value>, name: &str, value: Value) {
    if !values.contains_key(name) {
        values.insert(name.to_owned(), value);
        return;
    }
    let mut n = 2;
    while values.contains_key(&format!("{name}_{n}")) {
        n += 1;
    }
    values.insert(format!("{name}_{n}"), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(data: &[u8]) -> Value {
        Value::Object(decode(data).unwrap().values)
    }

    /// The example advertisement of the format page: `DIY-sensor`, 25.00 °C
    /// and 50.55 %.
    #[test]
    fn the_format_pages_example_advertisement() {
        let decoded = decode(&[0x40, 0x02, 0xC4, 0x09, 0x03, 0xBF, 0x13]).unwrap();
        assert_eq!(
            Value::Object(decoded.values),
            json!({"temperature": 25.0, "humidity": 50.55})
        );
        assert_eq!(decoded.counter, None);
    }

    /// The example bytes and values of the sensor table, object by object.
    #[test]
    fn the_sensor_tables_examples() {
        let cases: &[(&[u8], Value)] = &[
            (&[0x01, 0x61], json!({"battery": 97})),
            (&[0x02, 0xCA, 0x09], json!({"temperature": 25.06})),
            (&[0x03, 0xBF, 0x13], json!({"humidity": 50.55})),
            (&[0x04, 0x13, 0x8A, 0x01], json!({"pressure": 1008.83})),
            (&[0x05, 0x13, 0x8A, 0x14], json!({"illuminance": 13460.67})),
            (&[0x06, 0x5E, 0x1F], json!({"mass_kg": 80.3})),
            (&[0x07, 0x3E, 0x1D], json!({"mass_lb": 74.86})),
            (&[0x08, 0xCA, 0x06], json!({"dewpoint": 17.38})),
            (&[0x09, 0x60], json!({"count": 96})),
            (&[0x0A, 0x13, 0x8A, 0x14], json!({"energy": 1346.067})),
            (&[0x0B, 0x02, 0x1B, 0x00], json!({"power": 69.14})),
            (&[0x0C, 0x02, 0x0C], json!({"voltage": 3.074})),
            (&[0x0D, 0x12, 0x0C], json!({"pm2_5": 3090})),
            (&[0x0E, 0x02, 0x1C], json!({"pm10": 7170})),
            (&[0x12, 0xE2, 0x04], json!({"co2": 1250})),
            (&[0x13, 0x33, 0x01], json!({"tvoc": 307})),
            (&[0x14, 0x02, 0x0C], json!({"moisture": 30.74})),
            (&[0x2E, 0x23], json!({"humidity": 35})),
            (&[0x2F, 0x23], json!({"moisture": 35})),
            (&[0x3D, 0x09, 0x60], json!({"count": 24585})),
            (
                &[0x3E, 0x2A, 0x2C, 0x09, 0x60],
                json!({"count": 1611213866}),
            ),
            (&[0x3F, 0x02, 0x0C], json!({"rotation": 307.4})),
            (&[0x40, 0x0C, 0x00], json!({"distance_mm": 12})),
            (&[0x41, 0x4E, 0x00], json!({"distance_m": 7.8})),
            (&[0x42, 0x4E, 0x34, 0x00], json!({"duration": 13.39})),
            (&[0x43, 0x4E, 0x34], json!({"current": 13.39})),
            (&[0x44, 0x4E, 0x34], json!({"speed": 133.9})),
            (&[0x45, 0x11, 0x01], json!({"temperature": 27.3})),
            (&[0x46, 0x32], json!({"uv_index": 5.0})),
            (&[0x47, 0x87, 0x56], json!({"volume": 2215.1})),
            (&[0x48, 0xDC, 0x87], json!({"volume_ml": 34780})),
            (&[0x49, 0xDC, 0x87], json!({"volume_flow_rate": 34.78})),
            (&[0x4A, 0x02, 0x0C], json!({"voltage": 307.4})),
            (&[0x4B, 0x13, 0x8A, 0x14], json!({"gas": 1346.067})),
            (&[0x4C, 0x41, 0x01, 0x8A, 0x01], json!({"gas": 25821.505})),
            (
                &[0x4D, 0x12, 0x13, 0x8A, 0x14],
                json!({"energy": 344593.17}),
            ),
            (
                &[0x4E, 0x87, 0x56, 0x2A, 0x01],
                json!({"volume": 19551.879}),
            ),
            (&[0x4F, 0x87, 0x56, 0x2A, 0x01], json!({"water": 19551.879})),
            (&[0x51, 0x87, 0x56], json!({"acceleration": 22.151})),
            (&[0x52, 0x87, 0x56], json!({"gyroscope": 22.151})),
            (
                &[0x55, 0x87, 0x56, 0x2A, 0x01],
                json!({"volume_storage": 19551.879}),
            ),
            (&[0x56, 0x04, 0x13], json!({"conductivity": 4868})),
            (&[0x57, 0xEA], json!({"temperature": -22})),
            (&[0x58, 0x01], json!({"temperature": 0.35})),
            (&[0x5C, 0x02, 0x1B, 0x00, 0x00], json!({"power": 69.14})),
            (&[0x5D, 0x4E, 0x34], json!({"current": 13.39})),
            (&[0x5E, 0x9F, 0x8C], json!({"direction": 359.99})),
            (&[0x5F, 0x3C, 0x02], json!({"precipitation": 57.2})),
            (&[0x60, 0x01], json!({"channel": 1})),
            (&[0x61, 0x80, 0x0C], json!({"rotational_speed": 3200})),
        ];
        for (objects, expected) in cases {
            let data = [&[0x40], *objects].concat();
            assert_eq!(&values(&data), expected, "{objects:02x?}");
        }
    }

    #[test]
    fn binary_sensors_events_text_and_raw() {
        assert_eq!(
            values(&[
                0x44, 0x0F, 0x01, 0x10, 0x00, 0x11, 0x01, 0x15, 0x01, 0x2D, 0x00
            ]),
            json!({"generic_boolean": true, "power_on": false, "opening": true,
                   "battery_low": true, "window": false})
        );
        assert_eq!(values(&[0x44, 0x3A, 0x04]), json!({"button": "long_press"}));
        assert_eq!(values(&[0x44, 0x3A, 0x80]), json!({"button": "hold_press"}));
        assert_eq!(values(&[0x44, 0x3C, 0x01, 0x03]), json!({"dimmer": -3}));
        assert_eq!(
            values(&[
                0x40, 0x53, 0x0C, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x20, 0x57, 0x6F, 0x72, 0x6C, 0x64,
                0x21
            ]),
            json!({"text": "Hello World!"})
        );
        assert_eq!(
            values(&[0x40, 0x54, 0x03, 0xAB, 0xCD, 0xEF]),
            json!({"raw": "abcdef"})
        );
    }

    #[test]
    fn packet_id_is_the_counter_and_repeated_sensors_are_numbered() {
        let decoded = decode(&[
            0x40, 0x00, 0x09, 0x01, 0x64, 0x02, 0xCA, 0x09, 0x02, 0xD4, 0x08,
        ])
        .unwrap();
        assert_eq!(decoded.counter, Some(9));
        assert_eq!(
            Value::Object(decoded.values),
            json!({"battery": 100, "temperature": 25.06, "temperature_2": 22.6})
        );
    }

    /// The example of <https://bthome.io/encryption/>: key
    /// 231d39c1d7cc1ab1aee224cd096db932, address 54:48:E6:8F:80:A5,
    /// counter bytes 00 11 22 33, 25.06 °C and 50.55 %.
    const SPEC_KEY: [u8; 16] = [
        0x23, 0x1D, 0x39, 0xC1, 0xD7, 0xCC, 0x1A, 0xB1, 0xAE, 0xE2, 0x24, 0xCD, 0x09, 0x6D, 0xB9,
        0x32,
    ];
    const SPEC_MAC: [u8; 6] = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];
    const SPEC_ADVERT: [u8; 15] = [
        0x41, 0xA4, 0x72, 0x66, 0xC9, 0x5F, 0x73, 0x00, 0x11, 0x22, 0x33, 0x78, 0x23, 0x72, 0x14,
    ];

    fn with<'a>(key: &'a BindKey, mac: [u8; 6]) -> Option<Encryption<'a>> {
        Some(Encryption { key, mac })
    }

    /// Encrypts `objects` as a device would, for adverts of our own.
    fn seal(key: &BindKey, mac: [u8; 6], info: u8, counter: u32, objects: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 13];
        nonce[..6].copy_from_slice(&mac);
        nonce[6..8].copy_from_slice(&[0xD2, 0xFC]);
        nonce[8] = info;
        nonce[9..].copy_from_slice(&counter.to_le_bytes());
        let mut data = objects.to_vec();
        let mic = Cipher::new(GenericArray::from_slice(key.bytes()))
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), &[], &mut data)
            .unwrap();
        [&[info][..], &data, &counter.to_le_bytes(), &mic].concat()
    }

    #[test]
    fn the_encryption_pages_example_decrypts() {
        let key = BindKey::new(SPEC_KEY);
        let decoded = decode_with(&SPEC_ADVERT, with(&key, SPEC_MAC)).unwrap();
        assert_eq!(
            Value::Object(decoded.values),
            json!({"temperature": 25.06, "humidity": 50.55})
        );
        assert_eq!(
            decoded.sealed,
            Some(Sealed {
                counter: 0x3322_1100,
                mic: [0x78, 0x23, 0x72, 0x14]
            })
        );
        // Our own encryption gives the page's bytes.
        let objects = [0x02, 0xCA, 0x09, 0x03, 0xBF, 0x13];
        assert_eq!(
            seal(&key, SPEC_MAC, 0x41, 0x3322_1100, &objects),
            SPEC_ADVERT
        );
    }

    #[test]
    fn a_wrong_key_address_or_altered_byte_fails_the_mic() {
        let key = BindKey::new(SPEC_KEY);
        let mut other = SPEC_KEY;
        other[0] ^= 1;
        let wrong = BindKey::new(other);
        let mic_failed = |r: Result<Decoded, DecodeError>| {
            let e = r.unwrap_err().0;
            assert!(e.contains("MIC check failed"), "{e}");
            assert!(!e.to_lowercase().contains("231d"), "{e}");
        };
        mic_failed(decode_with(&SPEC_ADVERT, with(&wrong, SPEC_MAC)));
        mic_failed(decode_with(
            &SPEC_ADVERT,
            with(&key, [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA6]),
        ));
        for i in 1..SPEC_ADVERT.len() {
            let mut altered = SPEC_ADVERT;
            altered[i] ^= 0x80;
            mic_failed(decode_with(&altered, with(&key, SPEC_MAC)));
        }
        // The device information byte is part of the nonce too.
        let mut trigger = SPEC_ADVERT;
        trigger[0] = 0x45;
        mic_failed(decode_with(&trigger, with(&key, SPEC_MAC)));
    }

    #[test]
    fn adverts_we_encrypt_decode_with_their_counter_and_packet_id() {
        let key = BindKey::new([7; 16]);
        let mac = [0xA4, 0xC1, 0x38, 0, 0, 1];
        for counter in [0, 1, 0x0102_0304, u32::MAX] {
            let objects = [0x00, counter as u8, 0x01, 0x64, 0x02, 0xCA, 0x09];
            let data = seal(&key, mac, 0x45, counter, &objects);
            let decoded = decode_with(&data, with(&key, mac)).unwrap();
            assert_eq!(decoded.counter, Some(u32::from(counter as u8)));
            assert_eq!(decoded.sealed.map(|s| s.counter), Some(counter));
            assert_eq!(
                Value::Object(decoded.values),
                json!({"battery": 100, "temperature": 25.06})
            );
        }
        // No objects at all is still authentic.
        let empty = seal(&key, mac, 0x41, 9, &[]);
        assert!(
            decode_with(&empty, with(&key, mac))
                .unwrap()
                .values
                .is_empty()
        );
    }

    #[test]
    fn encryption_refusals() {
        let key = BindKey::new(SPEC_KEY);
        let e = decode_with(&[0x40, 0x02, 0xCA, 0x09], with(&key, SPEC_MAC)).unwrap_err();
        assert!(e.0.contains("unencrypted"), "{e}");
        for short in 1..9 {
            let e = decode_with(&SPEC_ADVERT[..short], with(&key, SPEC_MAC)).unwrap_err();
            assert!(e.0.contains("at least 8"), "{short}: {e}");
        }
    }

    #[test]
    fn refusals() {
        assert!(decode(&[]).is_err());
        assert!(
            decode(&[0x41, 0x02, 0xCA, 0x09])
                .unwrap_err()
                .0
                .contains("set the device's bindkey")
        );
        assert!(
            decode(&[0x20, 0x02, 0xCA, 0x09])
                .unwrap_err()
                .0
                .contains("version 1")
        );
        assert!(
            decode(&[0x40, 0x02, 0xCA])
                .unwrap_err()
                .0
                .contains("cut short")
        );
        assert!(decode(&[0x40, 0xEE, 0x01]).unwrap_err().0.contains("0xee"));
        // What came before an unknown object is kept.
        assert_eq!(
            values(&[0x40, 0x01, 0x50, 0xEE, 0x01]),
            json!({"battery": 80})
        );
        // Device information is no measurement.
        assert_eq!(
            values(&[0x40, 0xF0, 0x01, 0x00, 0x01, 0x50]),
            json!({"battery": 80})
        );
    }
}
