//! `fieldgate ble scan`: what is advertising nearby, and what each decoder
//! reads from it, so a user can write the YAML.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use btleplug::api::{Central, Peripheral as _, ScanFilter};
use btleplug::platform::Manager;
use futures::StreamExt;

use super::adapter::{self, explain};
use super::decode;
use crate::config::ble::{BleUuid, MacAddress};

/// One nearby device.
#[derive(Debug, Clone)]
pub struct Seen {
    pub address: MacAddress,
    pub local_name: Option<String>,
    pub rssi: Option<i16>,
    /// One line per decoder that reads its advertisement, or what it sends.
    pub details: Vec<String>,
}

/// Scans for `seconds` on `adapter` (or the first), then lists what it saw,
/// strongest signal first.
pub async fn scan(adapter: Option<&str>, seconds: Duration) -> Result<Vec<Seen>, String> {
    let mut manager: Option<Manager> = None;
    let (adapter, _) = adapter::open(&mut manager, adapter).await?;
    let mut events = adapter.events().await.map_err(|e| explain(&e))?;
    adapter
        .start_scan(ScanFilter::default())
        .await
        .map_err(|e| explain(&e))?;
    let mut ids = BTreeSet::new();
    let deadline = tokio::time::sleep(seconds);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            event = events.next() => match event {
                Some(btleplug::api::CentralEvent::DeviceDiscovered(id)) => {
                    ids.insert(id);
                }
                Some(_) => {}
                None => return Err("the BlueZ event stream ended".into()),
            },
        }
    }
    let _ = adapter.stop_scan().await;
    let mut seen = Vec::new();
    for p in adapter.peripherals().await.map_err(|e| explain(&e))? {
        let Ok(Some(props)) = p.properties().await else {
            continue;
        };
        seen.push(Seen {
            address: MacAddress(p.address().into_inner()),
            local_name: props.local_name.or(props.advertisement_name),
            rssi: props.rssi,
            details: describe(&props.manufacturer_data, &props.service_data),
        });
    }
    seen.sort_by_key(|s| (std::cmp::Reverse(s.rssi.unwrap_or(i16::MIN)), s.address.0));
    Ok(seen)
}

/// What the decoders read from an advertisement, or else what it carries.
pub fn describe(
    manufacturer_data: &std::collections::HashMap<u16, Vec<u8>>,
    service_data: &std::collections::HashMap<uuid::Uuid, Vec<u8>>,
) -> Vec<String> {
    let decoded = decode::decode_any(manufacturer_data, service_data);
    if !decoded.is_empty() {
        return decoded
            .into_iter()
            .map(|(decoder, d)| {
                let mut line = format!("decoder: {decoder} ");
                let values: Vec<String> =
                    d.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line.push_str(&values.join(" "));
                line
            })
            .collect();
    }
    let mut lines = Vec::new();
    // Encrypted BTHome reads nothing without the key, but is worth naming.
    if service_data
        .get(&decode::BTHOME_UUID.0)
        .and_then(|d| d.first())
        .is_some_and(|info| info >> 5 == 2 && info & 0x01 != 0)
    {
        lines.push("decoder: bthome, encrypted (set the device's bindkey)".to_owned());
    }
    let mut ids: Vec<_> = manufacturer_data.iter().collect();
    ids.sort();
    for (id, data) in ids {
        lines.push(format!("manufacturer {id:#06x}: {}", hex(data)));
    }
    let mut services: Vec<_> = service_data.iter().collect();
    services.sort();
    for (uuid, data) in services {
        lines.push(format!("service data {}: {}", BleUuid(*uuid), hex(data)));
    }
    lines
}

fn hex(data: &[u8]) -> String {
    data.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The listing as printed: one block per device.
pub fn render(seen: &[Seen]) -> String {
    if seen.is_empty() {
        return "no BLE devices seen\n".into();
    }
    let mut out = String::new();
    for s in seen {
        let rssi = s
            .rssi
            .map_or("   ? dBm".to_owned(), |r| format!("{r:>4} dBm"));
        let name = s.local_name.as_deref().unwrap_or("-");
        let _ = writeln!(out, "{}  {rssi}  {name}", s.address);
        for line in &s.details {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_listing_names_the_decoder_and_its_values() {
        let bthome = HashMap::from([(
            decode::BTHOME_UUID.0,
            vec![0x40, 0x02, 0xC4, 0x09, 0x03, 0xBF, 0x13],
        )]);
        let seen = [
            Seen {
                address: MacAddress([0xA4, 0xC1, 0x38, 0, 0, 1]),
                local_name: Some("DIY-sensor".into()),
                rssi: Some(-61),
                details: describe(&HashMap::new(), &bthome),
            },
            Seen {
                address: MacAddress([0xA4, 0xC1, 0x38, 0, 0, 2]),
                local_name: None,
                rssi: Some(-70),
                details: describe(
                    &HashMap::new(),
                    &HashMap::from([(decode::BTHOME_UUID.0, vec![0x41, 0xA4, 0x72])]),
                ),
            },
            Seen {
                address: MacAddress([1, 2, 3, 4, 5, 6]),
                local_name: None,
                rssi: None,
                details: describe(
                    &HashMap::from([(0x004C, vec![0x02, 0x15])]),
                    &HashMap::new(),
                ),
            },
        ];
        assert_eq!(
            render(&seen),
            "A4:C1:38:00:00:01   -61 dBm  DIY-sensor\n    decoder: bthome humidity=50.55 temperature=25.0\n\
             A4:C1:38:00:00:02   -70 dBm  -\n    decoder: bthome, encrypted (set the device's bindkey)\n    \
             service data 0000fcd2-0000-1000-8000-00805f9b34fb: 41a472\n\
             01:02:03:04:05:06     ? dBm  -\n    manufacturer 0x004c: 0215\n"
        );
    }
}
