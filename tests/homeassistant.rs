//! The Home Assistant harness (tests/common/homeassistant.rs) against a real
//! Home Assistant core: a device-based MQTT discovery message published by
//! hand makes a device with a temperature sensor, its state arrives, and
//! an empty retained config removes the device again.

mod common;

use std::time::Duration;

use common::Broker;
use common::homeassistant::{HomeAssistant, publish_retained};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn device_discovery_state_and_removal() {
    let broker = Broker::start();
    let ha = HomeAssistant::start(broker.port);

    let config = json!({
        "dev": {"ids": ["smoke_dev"], "name": "Smoke device"},
        "o": {"name": "fieldgate"},
        "cmps": {"t": {
            "p": "sensor",
            "unique_id": "smoke_t",
            "state_topic": "smoke/t",
            "unit_of_measurement": "°C",
            "device_class": "temperature",
        }},
    });
    publish_retained(
        broker.port,
        "homeassistant/device/smoke_dev/config",
        &config.to_string(),
    );
    // Retained, so that it arrives whenever the new entity subscribes.
    publish_retained(broker.port, "smoke/t", "21.5");

    let mut entity_id = None;
    let seen = ha.wait_until(WAIT, |ha| {
        entity_id = ha.entity_id("smoke_t");
        entity_id
            .as_deref()
            .and_then(|id| ha.state(id))
            .is_some_and(|s| s["state"] == "21.5")
    });
    let entity_id = entity_id.unwrap_or_default();
    assert!(
        seen,
        "no entity with unique_id smoke_t and state 21.5 (entity id {entity_id:?})\n{}\n{}",
        ha.states(),
        ha.log()
    );
    let state = ha.state(&entity_id).expect("state");
    assert_eq!(state["attributes"]["unit_of_measurement"], "°C", "{state}");
    assert_eq!(
        state["attributes"]["device_class"], "temperature",
        "{state}"
    );

    let device = ha
        .device("smoke_dev")
        .expect("device smoke_dev in the registry");
    assert_eq!(device["name"], "Smoke device", "{device}");
    let registry = ha.registry();
    let entity = registry["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["unique_id"] == "smoke_t")
        .expect("entity smoke_t in the registry")
        .clone();
    assert_eq!(entity["device_id"], device["id"], "{entity}");
    assert_eq!(entity["platform"], "mqtt", "{entity}");

    publish_retained(broker.port, "homeassistant/device/smoke_dev/config", "");
    assert!(
        ha.wait_until(WAIT, |ha| ha.device("smoke_dev").is_none()),
        "device smoke_dev still in the registry\n{}\n{}",
        ha.registry(),
        ha.log()
    );
    assert_eq!(ha.entity_id("smoke_t"), None, "{}", ha.registry());
}
