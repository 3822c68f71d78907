//! A TCP proxy that decodes the MQTT it forwards (3.1.1 and 5) and checks
//! the client's packet ids: MQTT 3.1.1 §2.3.1 (and 5 §2.2.1) lets a client
//! use an id again only once the exchange that used it is complete (PUBACK;
//! PUBCOMP for QoS 2; SUBACK, UNSUBACK). Every PUBLISH, SUBSCRIBE or
//! UNSUBSCRIBE sent on an id still open is recorded as a reuse.
//!
//! Each packet is decoded before it is forwarded, so the order seen here is
//! the order each side saw: a client cannot answer a PUBCOMP this proxy has
//! not recorded yet.
//!
//! It also records which readings (the `"seq"`s in the payload) the broker
//! completed, so a test can count what the broker took even when the broker
//! does not pass everything on to subscribers.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::lock;

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;

/// What an open exchange the client started waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 PUBLISH sent, no PUBACK yet.
    PubAck,
    /// QoS 2 PUBLISH sent, no PUBREC yet.
    PubRec,
    /// QoS 2 PUBREC received (PUBREL sent or due), no PUBCOMP yet.
    PubComp,
    /// SUBSCRIBE or UNSUBSCRIBE sent, no SUBACK/UNSUBACK yet.
    SubAck,
}

/// A packet id the client used again while an exchange on it was open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reuse {
    pub pkid: u16,
    /// What the open exchange waited for.
    pub open: Stage,
    /// Packet type of the new packet (3 PUBLISH, 8 SUBSCRIBE, 10 UNSUBSCRIBE).
    pub packet: u8,
    /// The DUP flag of a reusing PUBLISH.
    pub dup: bool,
}

/// One client connection as seen through the proxy.
#[derive(Debug, Default, Clone)]
pub struct Connection {
    /// 4 for MQTT 3.1.1, 5 for MQTT 5 (0 before CONNECT).
    pub version: u8,
    /// QoS 1 and 2 PUBLISHes the client sent.
    pub publishes: u64,
    pub reuses: Vec<Reuse>,
    /// Acks from the broker for ids with no matching open exchange.
    pub stray_acks: Vec<(u8, u16)>,
    /// Seqs in PUBLISHes the client sent (QoS 1 and 2), in order.
    pub sent_seqs: Vec<i64>,
    /// Seqs of messages whose exchange the broker completed successfully.
    pub acked_seqs: Vec<i64>,
    /// Per id, the exchanges open on it (more than one only after a reuse).
    open: HashMap<u16, Vec<(Stage, Vec<i64>)>>,
}

impl Connection {
    /// Exchanges still open (at the end of a connection: never completed).
    pub fn open_ids(&self) -> usize {
        self.open.values().map(Vec::len).sum()
    }

    /// A whole packet from the client: `header` is its first byte.
    pub fn client_packet(&mut self, header: u8, body: &[u8]) {
        let kind = header >> 4;
        match kind {
            1 => self.version = connect_version(body),
            PUBLISH => {
                let qos = (header >> 1) & 3;
                let dup = header & 0x08 != 0;
                let Some((pkid, payload)) = publish_parts(body, qos, self.version) else {
                    return;
                };
                if qos == 0 {
                    return;
                }
                self.publishes += 1;
                let seqs = seqs(payload);
                self.sent_seqs.extend(&seqs);
                let stage = match qos {
                    1 => Stage::PubAck,
                    _ => Stage::PubRec,
                };
                self.start(pkid, stage, seqs, PUBLISH, dup);
            }
            SUBSCRIBE | UNSUBSCRIBE => {
                if let Some(pkid) = packet_id(body) {
                    self.start(pkid, Stage::SubAck, Vec::new(), kind, false);
                }
            }
            // PUBREL for our QoS 2, and our acks of the broker's messages
            // (their ids are the broker's), change nothing here.
            _ => {}
        }
    }

    /// A whole packet from the broker.
    pub fn broker_packet(&mut self, header: u8, body: &[u8]) {
        let kind = header >> 4;
        let Some(pkid) = packet_id(body) else {
            return;
        };
        // MQTT 5: a reason code may follow the id; 0x80 and up is a failure.
        let failed = self.version == 5 && body.get(2).is_some_and(|&r| r >= 0x80);
        let expected = match kind {
            PUBACK => Stage::PubAck,
            PUBREC => Stage::PubRec,
            PUBCOMP => Stage::PubComp,
            SUBACK | UNSUBACK => Stage::SubAck,
            // The broker's own PUBLISH and PUBREL use the broker's ids.
            _ => return,
        };
        // After a reuse, the ack goes to the open exchange it can answer.
        let exchanges = self.open.entry(pkid).or_default();
        let Some(i) = exchanges.iter().position(|(stage, _)| *stage == expected) else {
            self.stray_acks.push((kind, pkid));
            return;
        };
        let (_, seqs) = exchanges.remove(i);
        match kind {
            PUBREC if !failed => exchanges.push((Stage::PubComp, seqs)),
            PUBACK | PUBCOMP if !failed => self.acked_seqs.extend(seqs),
            _ => {}
        }
        if exchanges.is_empty() {
            self.open.remove(&pkid);
        }
    }

    fn start(&mut self, pkid: u16, stage: Stage, seqs: Vec<i64>, packet: u8, dup: bool) {
        let exchanges = self.open.entry(pkid).or_default();
        if let Some((open, _)) = exchanges.first() {
            self.reuses.push(Reuse {
                pkid,
                open: *open,
                packet,
                dup,
            });
        }
        exchanges.push((stage, seqs));
    }
}

/// Splits a byte stream into MQTT packets: (first byte, body).
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8], mut packet: impl FnMut(u8, &[u8])) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((header, start, len)) = frame(&self.buf[at..]) {
            packet(header, &self.buf[at + start..at + start + len]);
            at += start + len;
        }
        self.buf.drain(..at);
    }
}

/// A whole packet at the front of `buf`: (first byte, body offset, body length).
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let header = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            return (buf.len() >= start + len).then_some((header, start, len));
        }
    }
    // A malformed length: treat the rest as garbage we never finish.
    None
}

fn packet_id(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

/// The protocol level of a CONNECT (4: 3.1.1, 5: MQTT 5).
fn connect_version(body: &[u8]) -> u8 {
    let name = u16::from_be_bytes([
        body.first().copied().unwrap_or(0),
        body.get(1).copied().unwrap_or(0),
    ]);
    body.get(2 + name as usize).copied().unwrap_or(0)
}

/// A PUBLISH's packet id (0 for QoS 0) and payload.
fn publish_parts(body: &[u8], qos: u8, version: u8) -> Option<(u16, &[u8])> {
    let topic = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut at = 2 + topic;
    let mut pkid = 0;
    if qos > 0 {
        pkid = packet_id(body.get(at..)?)?;
        at += 2;
    }
    if version == 5 {
        let mut len = 0usize;
        for i in 0..4 {
            let b = *body.get(at)?;
            at += 1;
            len |= ((b & 0x7f) as usize) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        at += len;
    }
    Some((pkid, body.get(at..)?))
}

/// Every `"seq":N` in a payload (one reading, or a batch).
fn seqs(payload: &[u8]) -> Vec<i64> {
    let text = String::from_utf8_lossy(payload);
    text.match_indices("\"seq\":")
        .filter_map(|(i, key)| {
            let digits: String = text[i + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// The proxy: listens on `port`, forwards every connection to the target.
pub struct MqttTrace {
    pub port: u16,
    connections: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>>,
    stop: Arc<AtomicBool>,
}

impl MqttTrace {
    /// On a free port, forwarding to 127.0.0.1:`target`.
    pub fn start(target: u16) -> MqttTrace {
        MqttTrace::listen(TcpListener::bind("127.0.0.1:0").expect("bind"), target)
    }

    /// On a given port (one a gateway is already trying to reach).
    pub fn start_on(port: u16, target: u16) -> MqttTrace {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        MqttTrace::listen(listener, target)
    }

    fn listen(listener: TcpListener, target: u16) -> MqttTrace {
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (all, s) = (connections.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        // A broker that is down: the client sees its
                        // connection closed, as it would without us.
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let conn = Arc::new(Mutex::new(Connection::default()));
                        lock(&all).push(conn.clone());
                        pump(&client, &server, conn.clone(), true);
                        pump(&server, &client, conn, false);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        MqttTrace {
            port,
            connections,
            stop,
        }
    }

    /// A snapshot of every connection so far, oldest first.
    pub fn connections(&self) -> Vec<Connection> {
        lock(&self.connections)
            .iter()
            .map(|c| lock(c).clone())
            .collect()
    }

    /// Every reuse, with the index of its connection.
    pub fn reuses(&self) -> Vec<(usize, Reuse)> {
        self.connections()
            .into_iter()
            .enumerate()
            .flat_map(|(i, c)| c.reuses.into_iter().map(move |r| (i, r)))
            .collect()
    }

    /// Distinct seqs the broker completed, over all connections.
    pub fn acked_seqs(&self) -> BTreeSet<i64> {
        self.connections()
            .into_iter()
            .flat_map(|c| c.acked_seqs)
            .collect()
    }

    /// Publishes of a seq beyond its first, over all connections.
    pub fn duplicates(&self) -> usize {
        let sent: Vec<i64> = self
            .connections()
            .into_iter()
            .flat_map(|c| c.sent_seqs)
            .collect();
        let distinct: BTreeSet<i64> = sent.iter().copied().collect();
        sent.len() - distinct.len()
    }

    /// One line per connection, for failure messages.
    pub fn summary(&self) -> String {
        self.connections()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "connection {i}: MQTT v{} publishes {} acked {} reuses {} stray acks {} open at end {}\n",
                    c.version,
                    c.publishes,
                    c.acked_seqs.len(),
                    c.reuses.len(),
                    c.stray_acks.len(),
                    c.open_ids()
                )
            })
            .collect()
    }
}

impl Drop for MqttTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forwards `from` to `to`, decoding each packet before it goes on.
fn pump(from: &TcpStream, to: &TcpStream, conn: Arc<Mutex<Connection>>, from_client: bool) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut framer = Framer::default();
        let mut buf = [0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    {
                        let mut c = lock(&conn);
                        framer.push(&buf[..n], |header, body| match from_client {
                            true => c.client_packet(header, body),
                            false => c.broker_packet(header, body),
                        });
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
