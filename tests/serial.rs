//! Serial-line devices end to end: a pty made by socat plays the device,
//! the gateway reads it, and a subscriber on a private mosquitto checks
//! what arrives, including the `bad_input` counters on `P/status`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Serial devices on ptys, a gateway reading them, and a subscriber to
/// `fieldgate/gw/{filter}` on a private broker.
struct Rig {
    ptys: Vec<Pty>,
    gw: Gateway,
    sub: Subscriber,
    dir: tempfile::TempDir,
    _broker: Broker,
}

impl Rig {
    /// `devices` as (name, YAML keys after `port`, indented 4 spaces); each
    /// gets a pty at `dir/<name>`. Returns once the gateway opened them all.
    fn start(devices: &[(&str, &str)], filter: &str) -> Rig {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let client = format!("check-{}", devices[0].0);
        let sub = Subscriber::connect(broker.port, &client, &format!("fieldgate/gw/{filter}"));
        let yaml: String = devices
            .iter()
            .map(|(name, extra)| {
                let port = dir.path().join(name);
                format!(
                    "  - name: {name}\n    kind: serial\n    port: {}\n{extra}",
                    port.display()
                )
            })
            .collect();
        let config = write_config(dir.path(), broker.port, "", &yaml);
        let ptys = devices
            .iter()
            .map(|(name, _)| Pty::start(&dir.path().join(name)))
            .collect();
        let gw = Gateway::start(&config, dir.path());
        let rig = Rig {
            ptys,
            gw,
            sub,
            dir,
            _broker: broker,
        };
        rig.wait_for_open(devices.len());
        rig
    }

    fn link(&self, device: &str) -> PathBuf {
        self.dir.path().join(device)
    }

    /// Until the log says `serial port open` `times` times.
    fn wait_for_open(&self, times: usize) {
        let deadline = Instant::now() + WAIT;
        while self.gw.log().matches("serial port open").count() < times {
            assert!(
                Instant::now() < deadline,
                "the ports were not opened {times} times\n{}",
                self.gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn every_format_reaches_a_subscriber_with_the_right_values() {
    let mut rig = Rig::start(
        &[
            (
                "arduino",
                "    baud: 115200\n    format: json\n    fields:\n      t: temperature\n      \
                 env.rh: { point: humidity, unit: \"%\" }\n    timestamp: { field: ts }\n",
            ),
            (
                "particles",
                "    format: csv\n    columns: [pm1, pm25, pm10, status]\n    \
                 fields: { pm25: pm2_5, pm10: { point: pm10, scale: 0.1 } }\n",
            ),
            (
                "station",
                "    format: kv\n    separator: \";\"\n    kv_separator: \":\"\n    \
                 fields: { T: temperature, P: { point: pressure, offset: -1000 } }\n",
            ),
            (
                "gps",
                "    format: regex\n    \
                 pattern: '^\\$GPX,(?<lat>-?[0-9.]+),(?<lon>-?[0-9.]+)\\*'\n    \
                 fields: { lat: lat, lon: lon }\n    delimiter: \"\\r\\n\"\n",
            ),
        ],
        "telemetry/#",
    );
    rig.ptys[0]
        .send(b"{\"t\": 21.5, \"env\": {\"rh\": 40}, \"ts\": 1764064800123}\r\n{\"t\": 22}\n");
    rig.ptys[1].send(b"3,12,155,OK\n4,,160,OK\n");
    rig.ptys[2].send(b"T:19.25;P:2013.2\nT: -2 ; P:1999\n");
    rig.ptys[3].send(b"$GPX,48.137154,11.576124*5A\r\n$GPX,-33.8688,151.2093*11\r\n");

    let all = rig.sub.wait_until(WAIT, |m| telemetry(m).len() >= 8);
    let messages = rig.sub.messages();
    let log = rig.gw.log();
    assert!(
        all,
        "{} readings arrived\n{log}",
        telemetry(&messages).len()
    );
    assert_eq!(
        device_values(&messages, "arduino"),
        [
            json!({"temperature": 21.5, "humidity": 40}),
            json!({"temperature": 22})
        ]
    );
    assert_eq!(
        device_values(&messages, "particles"),
        [json!({"pm2_5": 12, "pm10": 15.5}), json!({"pm10": 16})]
    );
    assert_eq!(
        device_values(&messages, "station"),
        [
            json!({"temperature": 19.25, "pressure": 1013.2}),
            json!({"temperature": -2, "pressure": 999})
        ]
    );
    assert_eq!(
        device_values(&messages, "gps"),
        [
            json!({"lat": 48.137154, "lon": 11.576124}),
            json!({"lat": -33.8688, "lon": 151.2093})
        ]
    );
    // The device's own timestamp when it sends one, the arrival time else.
    let arduino: Vec<Value> = messages
        .iter()
        .filter(|m| m.topic == "fieldgate/gw/telemetry/arduino")
        .map(Message::json)
        .collect();
    assert_eq!(arduino[0]["ts"], "2025-11-25T10:00:00.123Z");
    assert_ne!(arduino[1]["ts"], arduino[0]["ts"]);
    assert!(!log.contains("bad line"), "{log}");
}

#[test]
fn garbage_long_lines_and_invalid_utf8_are_skipped_and_counted_exactly() {
    let mut rig = Rig::start(
        &[("noisy", "    format: json\n    fields: { n: n }\n")],
        "#",
    );

    // Every 10th line is garbage of one kind or another.
    let garbage: [&[u8]; 8] = [
        b"{\"n\": 1",            // cut short
        b"{\"n\": \"many\"}",    // not a number
        b"\x00\x01\x02\xfe\xff", // binary, not UTF-8
        b"{\"n\": 1\xc3\x28}",   // invalid UTF-8 inside JSON
        b"[1, 2, 3]",            // not an object
        b"{\"other\": 5}",       // none of the fields
        b"booting v1.2 \x1b[0m", // a boot banner
        b"{\"n\": 1e999}",       // not a finite number
    ];
    let mut good = 0;
    let mut bad = 0;
    let mut stream = Vec::new();
    for i in 0..400u32 {
        if i % 10 == 9 {
            stream.extend_from_slice(garbage[(i / 10) as usize % garbage.len()]);
            bad += 1;
        } else {
            stream.extend_from_slice(format!("{{\"n\": {good}}}").as_bytes());
            good += 1;
        }
        stream.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
        if i == 200 {
            // A megabyte without a delimiter, ended by the next one: one bad line.
            stream.extend(std::iter::repeat_n(b'x', 1 << 20));
            stream.push(b'\n');
            bad += 1;
        }
    }
    let sent = Instant::now();
    let pty = &mut rig.ptys[0];
    pty.send(&stream);
    // Blank lines are neither readings nor bad input.
    pty.send(b"\n\r\n   \n");
    pty.send(format!("{{\"n\": {good}}}\n").as_bytes());
    good += 1;

    let sub = &rig.sub;
    let arrived = sub.wait_until(WAIT, |m| device_values(m, "noisy").len() >= good);
    let values = device_values(&sub.messages(), "noisy");
    assert!(
        arrived,
        "{} of {good} readings\n{}",
        values.len(),
        rig.gw.log()
    );
    eprintln!(
        "{good} good lines, {bad} bad ones (1 MiB among them) in {:?}",
        sent.elapsed()
    );
    let expected: Vec<Value> = (0..good).map(|n| json!({ "n": n })).collect();
    assert_eq!(values, expected, "every good line, in order");

    let counted = |m: &[Message]| {
        device_status(m, "noisy").is_some_and(|s| s["bad_input"] == bad && s["readings"] == good)
    };
    assert!(
        sub.wait_until(WAIT, counted),
        "expected bad_input {bad}, status {:?}",
        device_status(&sub.messages(), "noisy")
    );
    // Another refresh (status_interval is 1s) still says the same.
    let refreshes = sub.count();
    assert!(sub.wait_until(WAIT, |m| m.len() > refreshes + 1 && counted(m)));
    let status = device_status(&sub.messages(), "noisy").unwrap();
    assert_eq!(status["errors"], 0, "{status}");
    assert!(status.get("problem").is_none(), "{status}");
    // Logged, but not every one of them.
    let logged = rig.gw.log().matches("bad line skipped").count();
    assert!((1..=5).contains(&logged), "{logged} bad lines logged");
    // The first one, quoted and escaped once.
    assert!(
        rig.gw.log().contains(r#"line="{\"n\": 1""#),
        "{}",
        rig.gw.log()
    );
}

#[test]
fn a_pty_closed_and_recreated_at_the_same_path_resumes_without_restart() {
    let mut rig = Rig::start(&[("replug", "    format: kv\n    fields: { v: v }\n")], "#");
    rig.ptys[0].send(b"v=1\nv=2\n");
    let values = |m: &[Message]| device_values(m, "replug");
    assert!(rig.sub.wait_until(WAIT, |m| values(m).len() >= 2));

    // Unplugged: the port is gone, and the status says so.
    rig.ptys.remove(0).close();
    let problem = |m: &[Message]| device_status(m, "replug").map(|s| s["problem"].clone());
    let gone = |m: &[Message]| {
        problem(m).is_some_and(|p| {
            p.as_str()
                .is_some_and(|p| p.starts_with("port lost") || p.starts_with("cannot open"))
        })
    };
    assert!(
        rig.sub.wait_until(WAIT, gone),
        "{:?}\n{}",
        problem(&rig.sub.messages()),
        rig.gw.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(rig.gw.is_running(), "{}", rig.gw.log());

    // Plugged in again at the same path.
    let plugged = Instant::now();
    rig.ptys.push(Pty::start(&rig.link("replug")));
    rig.wait_for_open(2);
    rig.ptys[0].send(b"v=3\nv=4\n");
    assert!(
        rig.sub.wait_until(WAIT, |m| values(m).len() >= 4),
        "{}",
        rig.gw.log()
    );
    eprintln!(
        "readings arrived {:?} after the pty was back",
        plugged.elapsed()
    );
    assert_eq!(
        values(&rig.sub.messages()),
        [
            json!({"v": 1}),
            json!({"v": 2}),
            json!({"v": 3}),
            json!({"v": 4})
        ]
    );
    let healthy = |m: &[Message]| {
        device_status(m, "replug").is_some_and(|s| s.get("problem").is_none() && s["errors"] != 0)
    };
    assert!(
        rig.sub.wait_until(WAIT, healthy),
        "{:?}",
        device_status(&rig.sub.messages(), "replug")
    );
    let log = rig.gw.log();
    assert_eq!(log.matches("serial port lost").count(), 1, "{log}");
    assert_eq!(log.matches("serial port open again").count(), 1, "{log}");
    assert!(rig.gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_quiet_device_is_reported_stale_until_it_speaks_again() {
    let mut rig = Rig::start(
        &[(
            "quiet",
            "    format: csv\n    columns: [v]\n    fields: { v: v }\n    stale_after: 1500ms\n",
        )],
        "status",
    );
    let problem = |m: &[Message]| device_status(m, "quiet").map(|s| s["problem"].clone());
    let stale = Some(json!("stale: nothing for 1500ms"));
    assert!(
        rig.sub.wait_until(WAIT, |m| problem(m) == stale),
        "{:?}\n{}",
        problem(&rig.sub.messages()),
        rig.gw.log()
    );
    rig.ptys[0].send(b"1\n");
    assert!(
        rig.sub
            .wait_until(WAIT, |m| problem(m) == Some(Value::Null)),
        "{:?}",
        problem(&rig.sub.messages())
    );
    let log = rig.gw.log();
    assert_eq!(log.matches("stale").count(), 1, "logged once\n{log}");
    assert_eq!(log.matches("lines arrive again").count(), 1, "{log}");
}

mod writes {
    //! Write templates, in process, on a pty pair from tokio-serial.

    use std::time::Duration;

    use fieldgate::config::{DeviceConfig, load_str};
    use fieldgate::health::Health;
    use fieldgate::reading::Qos;
    use fieldgate::sources::Ingest;
    use fieldgate::sources::serial::{self, SerialHandle, WriteError};
    use fieldgate::store::Store;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::task::JoinSet;
    use tokio_serial::{SerialPort, SerialStream};
    use tokio_util::sync::CancellationToken;

    const DEVICE: &str = "
    write:
      setpoint: \"SET {point} {value}\\n\"
      fan: \"FAN={value}\\r\\n\"
";

    /// Starts the source of one serial device on `port` in process.
    fn start(
        port: &str,
        dir: &std::path::Path,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) -> (SerialHandle, Store) {
        let yaml = format!(
            "gateway: {{ id: gw, state_dir: {state} }}\nmqtt: {{ url: mqtt://127.0.0.1:1 }}\n\
             devices:\n  - name: board\n    kind: serial\n    port: {port}\n    format: kv\n    \
             fields: {{ v: v }}\n{DEVICE}",
            state = dir.display()
        );
        let config = load_str(&yaml, "test.yaml").unwrap();
        let DeviceConfig::Serial(device) = config.devices[0].clone() else {
            panic!("not a serial device");
        };
        let delivery = config.devices[0].delivery(Qos::AtLeastOnce);
        let (store, _thread) = Store::open(
            &dir.join("fieldgate.db"),
            &config.store,
            fieldgate::clock::Clock::system(),
        )
        .unwrap();
        let ingest = Ingest::new(store.clone(), Health::new());
        let handle = serial::spawn(device, delivery, &ingest, cancel, tasks);
        (handle, store)
    }

    #[tokio::test]
    async fn templates_are_written_between_the_lines_read() {
        let dir = tempfile::tempdir().unwrap();
        let (device_end, gateway_end) = SerialStream::pair().unwrap();
        let path = gateway_end.name().unwrap();
        drop(gateway_end); // the source opens it by its path
        let (mut tasks, cancel) = (JoinSet::new(), CancellationToken::new());
        let (handle, store) = start(&path, dir.path(), &mut tasks, &cancel);
        assert!(handle.is_writable("fan") && !handle.is_writable("v"));

        // Until the port is open, writes fail with the reason.
        let mut opened = false;
        for _ in 0..100 {
            match handle
                .write("setpoint", &json!(22), fieldgate::clock::Deadline::never())
                .await
            {
                Ok(()) => {
                    opened = true;
                    break;
                }
                Err(WriteError::PortClosed(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(opened, "the port never opened");

        // The device prints readings while commands go out.
        let (reader, mut writer) = tokio::io::split(device_end);
        let printer = tokio::spawn(async move {
            for v in 0..200 {
                writer
                    .write_all(format!("v={v}\n").as_bytes())
                    .await
                    .unwrap();
            }
            writer
        });
        for i in 0..50 {
            handle
                .write(
                    "fan",
                    &json!(i % 2 == 0),
                    fieldgate::clock::Deadline::never(),
                )
                .await
                .unwrap();
            handle
                .write(
                    "setpoint",
                    &json!(20.5 + f64::from(i)),
                    fieldgate::clock::Deadline::never(),
                )
                .await
                .unwrap();
        }
        let _writer = printer.await.unwrap();

        // Exactly the rendered bytes, one command after the other.
        let mut reader = BufReader::new(reader);
        let mut received = Vec::new();
        while received.len() < 101 {
            let mut line = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line))
                .await
                .expect("the device got every command")
                .unwrap();
            received.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(received[0], "SET setpoint 22\n");
        for i in 0..50 {
            let fan = if i % 2 == 0 { "FAN=1\r\n" } else { "FAN=0\r\n" };
            assert_eq!(received[1 + 2 * i], fan);
            assert_eq!(
                received[2 + 2 * i],
                format!("SET setpoint {}\n", 20.5 + i as f64)
            );
        }

        assert_eq!(
            handle
                .write("v", &json!(1), fieldgate::clock::Deadline::never())
                .await,
            Err(WriteError::NotWritable("v".into()))
        );
        assert!(matches!(
            handle
                .write(
                    "setpoint",
                    &json!("1\nSET x 2"),
                    fieldgate::clock::Deadline::never()
                )
                .await,
            Err(WriteError::InvalidValue(_))
        ));

        // Every line printed became a reading meanwhile.
        let mut rows = Vec::new();
        for _ in 0..100 {
            store.flush().await.unwrap();
            rows = store.fetch([0; 3], 1_000).await.unwrap();
            if rows.len() >= 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rows.len(), 200);
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
