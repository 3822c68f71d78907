//! Packet ids as the protocol says, checked on the wire: a proxy that
//! decodes MQTT ([`MqttTrace`]) sits between the gateway and the broker and
//! records every id the gateway used again before its exchange completed
//! (PUBACK, or PUBCOMP for QoS 2). A backlog of QoS 1 and QoS 2 readings
//! drains through it to mosquitto, and to aedes (npm), which acks QoS 2 more
//! slowly and is restarted mid-drain.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mqtt_trace::{Connection, Framer, MqttTrace, Stage};
use common::*;

const LONG: Duration = Duration::from_secs(90);

/// Devices `q1-*` at QoS 1 and `q2-*` at QoS 2, `per_device` readings each,
/// as fast as the simulator goes.
fn mixed_devices(per_kind: usize, per_device: u64) -> String {
    (0..per_kind)
        .flat_map(|i| {
            [
                sim_device(&format!("q1-{i}"), "1ms", per_device, "    qos: 1\n"),
                sim_device(&format!("q2-{i}"), "1ms", per_device, "    qos: 2\n"),
            ]
        })
        .collect()
}

/// Waits until the broker has completed every seq below `end` but for
/// `others` that are not readings (availability messages carry no seq).
#[track_caller]
fn wait_for_acks(trace: &MqttTrace, gw: &Gateway, end: i64, others: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let acked = trace.acked_seqs();
        if (1..end).filter(|s| !acked.contains(s)).count() <= others {
            return;
        }
        if Instant::now() >= deadline {
            let missing: Vec<i64> = (1..end).filter(|s| !acked.contains(s)).take(10).collect();
            panic!(
                "the broker never completed e.g. {missing:?}\n{}\n{}",
                trace.summary(),
                gw.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn assert_no_reuse(trace: &MqttTrace, gw: &Gateway) {
    let reuses = trace.reuses();
    assert!(
        reuses.is_empty(),
        "{} packet ids reused before their exchange completed, e.g. {:?}\n{}\n{}",
        reuses.len(),
        &reuses[..reuses.len().min(5)],
        trace.summary(),
        gw.log()
    );
}

/// The trace itself: a QoS 2 id used again between PUBREL and PUBCOMP is a
/// reuse; used again after PUBCOMP it is not. Packets split across reads
/// are put back together.
#[test]
fn the_trace_sees_an_id_reused_before_pubcomp() {
    fn publish(qos: u8, pkid: u16, payload: &str) -> Vec<u8> {
        let mut body = vec![0, 1, b't'];
        body.extend(pkid.to_be_bytes());
        body.extend(payload.as_bytes());
        let mut packet = vec![0x30 | (qos << 1), body.len() as u8];
        packet.extend(body);
        packet
    }
    let ack = |kind: u8, pkid: u16| {
        let [hi, lo] = pkid.to_be_bytes();
        vec![kind << 4 | if kind == 6 { 2 } else { 0 }, 2, hi, lo]
    };
    let mut conn = Connection::default();
    let (mut from_client, mut from_broker) = (Framer::default(), Framer::default());
    let mut client = |conn: &mut Connection, bytes: &[u8]| {
        from_client.push(bytes, |h, b| conn.client_packet(h, b));
    };
    let connect = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30];
    client(&mut conn, &connect);
    let first = publish(2, 7, r#"{"seq":1}"#);
    client(&mut conn, &first[..3]);
    client(&mut conn, &first[3..]);
    from_broker.push(&ack(5, 7), |h, b| conn.broker_packet(h, b));
    client(&mut conn, &ack(6, 7));
    // Id 7 again, before the PUBCOMP: a reuse.
    client(&mut conn, &publish(1, 7, r#"{"seq":2}"#));
    assert_eq!(conn.reuses.len(), 1);
    assert_eq!(conn.reuses[0].open, Stage::PubComp);
    assert_eq!(conn.version, 4);
    // After a PUBACK, the id is free.
    let mut conn = Connection::default();
    let mut framer = Framer::default();
    let mut all = connect.to_vec();
    all.extend(publish(1, 3, r#"{"seq":5}"#));
    framer.push(&all, |h, b| conn.client_packet(h, b));
    Framer::default().push(&ack(4, 3), |h, b| conn.broker_packet(h, b));
    framer.push(&publish(1, 3, r#"{"seq":6}"#), |h, b| {
        conn.client_packet(h, b)
    });
    assert!(conn.reuses.is_empty());
    assert_eq!(conn.acked_seqs, vec![5]);
}

/// A backlog of 6,000 readings, half QoS 1 and half QoS 2, drains at
/// inflight 100 to mosquitto: no id is used again before its exchange
/// completed, and every committed reading arrives.
#[test]
fn a_mixed_qos_drain_never_reuses_an_open_packet_id() {
    drain_to_mosquitto("", 6_000);
}

/// The same over MQTT 5, where acks carry reason codes and properties.
#[test]
fn a_mixed_qos_drain_over_mqtt5_never_reuses_an_open_packet_id() {
    drain_to_mosquitto("  protocol: \"5\"\n", 4_000);
}

fn drain_to_mosquitto(mqtt: &str, readings: u64) {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-pkids", TELEMETRY);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        port,
        &format!("  max_inflight: 100\n{mqtt}"),
        &mixed_devices(2, readings / 4),
    );
    let mut gw = Gateway::start(&config, dir.path());
    // The readings and the four devices' `online`.
    let devices = 4;
    wait_for_queued(&config, &gw, readings + devices as u64, LONG);

    let trace = MqttTrace::start_on(port, broker.port);
    let end = (readings + devices as u64) as i64 + 1;
    wait_for_acks(&trace, &gw, end, devices);
    let complete = sub.wait_until(LONG, |m| distinct_seqs(m).len() >= readings as usize);
    assert!(complete, "{} arrived\n{}", sub.count(), gw.log());
    let messages = sub.messages();
    let seqs = distinct_seqs(&messages);
    assert!(reading_seqs_fit(&seqs, readings as usize, devices));
    assert_ordered_per_device(&messages);
    eprintln!("{}duplicates: {}", trace.summary(), trace.duplicates());
    assert_no_reuse(&trace, &gw);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 0);
}

/// A private aedes (npm, MQTT 3.1.1) on `port`, run by node from
/// `tests/aedes/server.js`. Killed on drop.
struct Aedes {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Aedes {
    /// `None` when node or the aedes package (installed by scripts/test.sh)
    /// is missing.
    fn start(port: u16, log: PathBuf) -> Option<Aedes> {
        let installed = aedes_dir().join("node_modules/aedes/package.json");
        if !installed.exists() || Command::new("node").arg("--version").output().is_err() {
            return None;
        }
        let mut aedes = Aedes {
            port,
            child: None,
            log,
        };
        aedes.spawn();
        Some(aedes)
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("aedes log");
        let mut child = Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aedes/server.js"))
            .arg(self.port.to_string())
            .env("AEDES_DIR", aedes_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(out)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line == "listening" {
                    let _ = tx.send(());
                    sent = true;
                }
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        self.child = Some(child);
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "aedes did not start\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Kill (no goodbye to anyone) and start again on the same port.
    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }
}

impl Drop for Aedes {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn aedes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/aedes")
}

/// aedes acks QoS 2 more slowly than mosquitto. Restarted mid-drain, it
/// must see one new session (a few at most, if a connect races its start),
/// not a storm of them; every committed reading is completed by the broker.
#[test]
fn an_aedes_restart_mid_drain_gives_one_new_session() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut aedes) = Aedes::start(free_port(), dir.path().join("aedes.log")) else {
        panic!("node or aedes missing: scripts/test.sh installs them into target/aedes");
    };
    let port = free_port();
    let config = write_config(
        dir.path(),
        port,
        "  max_inflight: 100\n",
        &mixed_devices(2, 2_500),
    );
    let mut gw = Gateway::start(&config, dir.path());
    // The readings and the four devices' `online`.
    wait_for_queued(&config, &gw, 10_004, LONG);

    let trace = MqttTrace::start_on(port, aedes.port);
    let deadline = Instant::now() + LONG;
    while trace.acked_seqs().len() < 2_000 {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            trace.summary(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = gw.log().matches("connected to").count();
    aedes.restart();
    wait_for_acks(&trace, &gw, 10_005, 4);
    let log = gw.log();
    let after = log.matches("connected to").count() - before;
    eprintln!(
        "{}connections after the restart: {after}; duplicates: {}",
        trace.summary(),
        trace.duplicates()
    );
    assert!(
        !log.to_lowercase().contains("unsolicited"),
        "rumqttc saw an ack it did not expect\n{log}"
    );
    assert!(
        (1..=3).contains(&after),
        "{after} connections after one broker restart\n{}\n{log}",
        trace.summary()
    );
    assert_no_reuse(&trace, &gw);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 0);
}
