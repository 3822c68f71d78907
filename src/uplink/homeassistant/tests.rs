use super::*;
use crate::config::WriteRange;
use crate::config::entity::EntityHints;
use crate::config::modbus::ValueType;
use crate::config::report::Function;

fn discovery() -> Discovery {
    let settings = Settings {
        prefix: "homeassistant".into(),
        device_name: Some("{gateway} {device}".into()),
        gateway_id: "site".into(),
        topics: Topics::new("fieldgate", "site"),
    };
    let temp = PointShape {
        name: "temp".into(),
        value_type: ValueType::F64,
        unit: Some("°C".into()),
        ..PointShape::default()
    };
    let setpoint = PointShape {
        name: "setpoint".into(),
        value_type: ValueType::I16,
        unit: Some("°C".into()),
        write: Some(WriteRange {
            min: Some(5.0),
            max: Some(80.0),
            step: Some(0.1),
        }),
        hints: EntityHints {
            name: Some("Set point".into()),
            ..EntityHints::default()
        },
        ..PointShape::default()
    };
    let pump = PointShape {
        name: "pump".into(),
        value_type: ValueType::Bool,
        write: Some(WriteRange::default()),
        ..PointShape::default()
    };
    let energy = PointShape {
        name: "energy".into(),
        value_type: ValueType::F64,
        unit: Some("kWh".into()),
        functions: vec![Function::Max, Function::Count],
        ..PointShape::default()
    };
    let boiler = DeviceModel {
        kind: "modbus".into(),
        points: vec![temp, setpoint, pump, energy],
    };
    let mut model = Model::default();
    model.devices.insert("boiler".into(), boiler);
    model.devices.insert(
        "thermo".into(),
        DeviceModel {
            kind: "ble".into(),
            points: Vec::new(),
        },
    );
    Discovery::new(settings, model)
}

fn body(message: &Message) -> Value {
    serde_json::from_str(&message.1).unwrap_or(Value::Null)
}

#[test]
fn a_device_is_one_message_with_a_component_per_point() {
    let mut d = discovery();
    let all = d.all();
    assert_eq!(all.len(), 3, "the gateway and two devices");
    let (topic, _) = &all[1];
    assert_eq!(topic, "homeassistant/device/site_boiler/config");
    let b = body(&all[1]);
    assert_eq!(b["dev"]["ids"][0], "site_boiler");
    assert_eq!(b["dev"]["name"], "site boiler");
    assert_eq!(b["dev"]["via_device"], "site");
    assert_eq!(b["o"]["name"], "fieldgate");
    assert_eq!(b["avty_mode"], "all");
    assert_eq!(b["avty"][0]["t"], "fieldgate/site/availability/boiler");
    assert_eq!(b["avty"][1]["t"], "fieldgate/site/status");
    let cmps = &b["cmps"];
    let temp = &cmps["temp"];
    assert_eq!(temp["p"], "sensor");
    assert_eq!(temp["unique_id"], "site_boiler_temp");
    assert_eq!(temp["stat_t"], "fieldgate/site/telemetry/boiler");
    assert_eq!(temp["dev_cla"], "temperature");
    assert_eq!(temp["stat_cla"], "measurement");
    let set = &cmps["setpoint"];
    assert_eq!(set["p"], "number");
    assert_eq!(set["name"], "Set point");
    assert_eq!(set["cmd_t"], "fieldgate/site/set/boiler/setpoint");
    assert_eq!(
        (&set["min"], &set["max"], &set["step"]),
        (&5.0.into(), &80.0.into(), &0.1.into())
    );
    assert_eq!(cmps["pump"]["p"], "switch");
    assert_eq!(cmps["pump"]["pl_on"], "true");
    // A window is one sensor per function; an energy total only grows.
    assert_eq!(cmps["energy_max"]["stat_cla"], "total_increasing");
    assert_eq!(cmps["energy_count"].get("unit_of_meas"), None);
    assert_eq!(cmps["energy_count"]["stat_cla"], "measurement");
}

#[test]
fn the_gateway_is_a_device_with_diagnostic_sensors() {
    let mut d = discovery();
    let all = d.all();
    assert_eq!(all[0].0, "homeassistant/device/site/config");
    let b = body(&all[0]);
    assert_eq!(b["cmps"]["queue_rows"]["ent_cat"], "diagnostic");
    assert_eq!(b["cmps"]["uptime"]["dev_cla"], "duration");
}

#[test]
fn learned_points_are_announced_once_and_removed_points_cut_to_their_platform() {
    let mut d = discovery();
    d.all();
    let m = d.learn("thermo", r#"{"temperature":21.5,"humidity":40}"#);
    let b = body(&m.unwrap_or_default());
    assert_eq!(b["cmps"]["humidity"]["dev_cla"], "humidity");
    assert_eq!(b["cmps"]["temperature"]["unit_of_meas"], "°C");
    assert_eq!(
        d.learn("thermo", r#"{"temperature":22}"#),
        None,
        "known already"
    );
    // The configuration drops `pump`: its component is cut to `{"p": …}`.
    let mut model = d.model.clone();
    if let Some(boiler) = model.devices.get_mut("boiler") {
        boiler.points.retain(|p| p.name != "pump");
    }
    d.set_model(model);
    let b = body(&d.all()[1]);
    assert_eq!(b["cmps"]["pump"], json!({"p": "switch"}));
    let (topic, payload) = d.removed("boiler");
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("homeassistant/device/site_boiler/config", "")
    );
}

#[test]
fn templates_find_a_point_in_a_reading_or_a_batch() {
    let t = template_for(&["temp"], component::Output::Plain);
    assert!(t.contains("value_json is mapping"), "{t}");
    assert!(t.contains("'temp' in r['values']"), "{t}");
    let t = template_for(&["energy", "max"], component::Output::Plain);
    assert!(
        t.contains("r['values']['energy'] is mapping and 'max' in r['values']['energy']"),
        "{t}"
    );
}
