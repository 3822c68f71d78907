//! Serial-line sensors: Arduinos, ESP32 boards, weather stations and
//! particle counters that print one line per measurement on a (USB)
//! serial port.
//!
//! One task owns each port. It reads lines ([`codec`]), turns them into
//! readings ([`parse`]), and skips and counts the lines it cannot use as
//! the device's `bad_input`. When the port goes away (a USB cable pulled)
//! the task reopens it with backoff until it is back; when the device
//! goes quiet for `stale_after`, the device is reported stale. Writes
//! (commands) go through the same task, so they never interleave with a
//! read in progress.

pub mod codec;
pub mod parse;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_serial::SerialStream;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use self::codec::{Frame, LineCodec};
use self::parse::{BadLine, LineParser};
use super::Ingest;
use crate::backoff::Backoff;
use crate::clock::Deadline;
use crate::config::serial::{FlowControl, Parity, SerialDevice, WriteTemplate};
use crate::health::DeviceHealth;
use crate::reading::{Delivery, Name};
use crate::reading::{Quality, Reading};

/// First and longest wait before reopening a port that failed.
const REOPEN_MIN: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// A write that the port does not take within this time fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bad lines logged per device and minute; the rest are counted only.
const BAD_LINES_LOGGED_PER_MINUTE: u32 = 5;

/// Why a write to a device failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("point `{0}` has no write template")]
    NotWritable(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("the serial port is not open ({0})")]
    PortClosed(String),
    #[error("the serial port took no data for {0:?}")]
    Timeout(Duration),
    #[error("write failed: {0}")]
    Io(String),
    #[error("the device's source has stopped")]
    Stopped,
    #[error("busy: {WRITES_WAITING} writes already wait for this port")]
    Busy,
    #[error("expired while it waited for the port; not written")]
    Expired,
}

/// Writes that may wait for one port; more are answered busy at once.
const WRITES_WAITING: usize = 16;

struct WriteRequest {
    bytes: Vec<u8>,
    deadline: Deadline,
    reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Talks to a running serial port task: writes go through it, in turn
/// with the lines it reads.
#[derive(Clone)]
pub struct SerialHandle {
    templates: Arc<BTreeMap<Name, WriteTemplate>>,
    requests: mpsc::Sender<WriteRequest>,
}

impl SerialHandle {
    /// Whether `point` has a write template.
    pub fn is_writable(&self, point: &str) -> bool {
        self.templates.keys().any(|p| p.as_str() == point)
    }

    /// Renders the write template of `point` with `value` and sends it to
    /// the device; returns once the bytes were handed to the port.
    pub async fn write(
        &self,
        point: &str,
        value: &Value,
        deadline: Deadline,
    ) -> Result<(), WriteError> {
        let template = self
            .templates
            .iter()
            .find(|(p, _)| p.as_str() == point)
            .map(|(_, t)| t)
            .ok_or_else(|| WriteError::NotWritable(point.to_owned()))?;
        let bytes = template
            .render(point, value)
            .map_err(WriteError::InvalidValue)?;
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            bytes,
            deadline,
            reply,
        };
        super::hand_over(
            &self.requests,
            request,
            WriteError::Busy,
            WriteError::Stopped,
        )?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

/// Starts the task of one serial device in `tasks`.
pub fn spawn(
    device: SerialDevice,
    delivery: Delivery,
    ingest: &Ingest,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> SerialHandle {
    let (requests, inbox) = mpsc::channel(WRITES_WAITING);
    let handle = SerialHandle {
        templates: Arc::new(device.write.clone()),
        requests,
    };
    let port = PortTask::new(device, delivery, ingest.clone(), inbox);
    tasks.spawn(port.run(cancel.clone()));
    handle
}

/// How a session on an open port ended.
enum Ended {
    Cancelled,
    /// The store is shutting down.
    StoreClosed,
    Lost(String),
}

struct PortTask {
    device: SerialDevice,
    delivery: Delivery,
    ingest: Ingest,
    health: Arc<DeviceHealth>,
    parser: LineParser,
    /// `None` once every handle is gone.
    inbox: Option<mpsc::Receiver<WriteRequest>>,
    bad_lines: LogLimit,
}

impl PortTask {
    fn new(
        device: SerialDevice,
        delivery: Delivery,
        ingest: Ingest,
        inbox: mpsc::Receiver<WriteRequest>,
    ) -> PortTask {
        PortTask {
            health: ingest.device_health(&device.name),
            parser: LineParser::new(&device),
            device,
            delivery,
            ingest,
            inbox: Some(inbox),
            bad_lines: LogLimit::default(),
        }
    }

    /// Opens the port, reads until it fails, reopens with backoff; until
    /// cancelled.
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
        let mut down = false;
        let (name, port) = (self.device.name.clone(), self.device.port.clone());
        loop {
            match self.open() {
                Ok(stream) => {
                    backoff.reset();
                    self.health.set_problem(None);
                    if std::mem::take(&mut down) {
                        tracing::info!(device = %name, port, "serial port open again");
                    } else {
                        tracing::info!(device = %name, port, "serial port open");
                    }
                    match self.session(stream, &cancel).await {
                        Ended::Cancelled | Ended::StoreClosed => break,
                        Ended::Lost(error) => {
                            down = true;
                            self.health.errors.fetch_add(1, Relaxed);
                            self.health.set_problem(Some(format!("port lost: {error}")));
                            tracing::warn!(device = %name, port, error, "serial port lost, reopening");
                        }
                    }
                }
                Err(error) => {
                    self.health.errors.fetch_add(1, Relaxed);
                    let problem = format!("cannot open {port}: {error}");
                    self.health.set_problem(Some(problem));
                    if std::mem::replace(&mut down, true) {
                        tracing::debug!(device = %name, port, %error, "serial port still unavailable");
                    } else {
                        tracing::warn!(device = %name, port, %error, "cannot open serial port, retrying");
                    }
                }
            }
            if !self.wait(backoff.next_delay(), &cancel).await {
                break;
            }
        }
        tracing::debug!(device = %name, "serial source stopped");
    }

    fn open(&self) -> tokio_serial::Result<SerialStream> {
        let d = &self.device;
        let data_bits = match d.data_bits.get() {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let stop_bits = match d.stop_bits.get() {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let parity = match d.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        };
        let flow_control = match d.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        };
        let baud = u32::try_from(d.baud.get()).unwrap_or(u32::MAX);
        let builder = tokio_serial::new(&d.port, baud)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .parity(parity)
            .flow_control(flow_control);
        SerialStream::open(&builder)
    }

    /// Sleeps before the next attempt to open, refusing writes meanwhile;
    /// false when cancelled.
    async fn wait(&mut self, delay: Duration, cancel: &CancellationToken) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                request = recv(&mut self.inbox) => {
                    let why = self.health.problem().unwrap_or_else(|| "reopening".into());
                    let _ = request.reply.send(Err(WriteError::PortClosed(why)));
                }
            }
        }
    }

    /// Reads lines from an open port (and writes what is asked) until the
    /// port fails or the task is cancelled.
    async fn session(&mut self, mut port: SerialStream, cancel: &CancellationToken) -> Ended {
        let max_line = self.device.max_line.get() as usize;
        let mut codec = LineCodec::new(self.device.delimiter.as_bytes(), max_line);
        let mut buf = BytesMut::with_capacity(8_192);
        let stale_after = self.device.stale_after.map(|d| d.get());
        let mut last_line = Instant::now();
        let mut stale = false;
        loop {
            buf.reserve(4_096);
            let stale_at = last_line + stale_after.unwrap_or_default();
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                read = port.read_buf(&mut buf) => match read {
                    Ok(0) => return Ended::Lost("end of file".into()),
                    Ok(_) => {}
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                request = recv(&mut self.inbox) => {
                    if request.deadline.passed() {
                        let _ = request.reply.send(Err(WriteError::Expired));
                        continue;
                    }
                    // No flush: on a tty it is tcdrain(), which blocks the
                    // thread until the UART has sent everything (forever if
                    // flow control holds it). The kernel has the bytes.
                    let sent =
                        tokio::time::timeout(WRITE_TIMEOUT, port.write_all(&request.bytes)).await;
                    let (answer, lost) = match sent {
                        Ok(Ok(())) => (Ok(()), None),
                        Ok(Err(e)) => (Err(WriteError::Io(e.to_string())), Some(e.to_string())),
                        Err(_) => (Err(WriteError::Timeout(WRITE_TIMEOUT)), None),
                    };
                    let _ = request.reply.send(answer);
                    if let Some(error) = lost {
                        return Ended::Lost(error);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(stale_at), if stale_after.is_some() && !stale => {
                    stale = true;
                    let quiet = crate::config::Duration(stale_after.unwrap_or_default());
                    if self.health.set_problem(Some(format!("stale: nothing for {quiet}"))) {
                        tracing::warn!(device = %self.device.name, "no line for {quiet}: stale");
                    }
                    continue;
                }
            }
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                last_line = Instant::now();
                if std::mem::take(&mut stale) && self.health.set_problem(None) {
                    tracing::info!(device = %self.device.name, "lines arrive again");
                }
                if self.line(frame, max_line).await.is_err() {
                    return Ended::StoreClosed;
                }
            }
        }
    }

    /// Handles one line: a reading, a bad line counted, or nothing.
    async fn line(&mut self, frame: Frame, max_line: usize) -> Result<(), ()> {
        let parsed = match &frame {
            Frame::Line(line) => self.parser.parse(line),
            Frame::TooLong => Err(BadLine::TooLong(max_line)),
        };
        let parsed = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(()),
            Err(reason) => {
                self.health.bad_input.fetch_add(1, Relaxed);
                if let Some(unlogged) = self.bad_lines.admit(Instant::now()) {
                    let line = match &frame {
                        Frame::Line(line) => preview(line),
                        Frame::TooLong => preview(b""),
                    };
                    tracing::warn!(
                        device = %self.device.name,
                        line = %line,
                        unlogged,
                        "bad line skipped: {reason}"
                    );
                }
                return Ok(());
            }
        };
        let stamp = self.ingest.clock().stamp();
        // A time the device wrote itself comes from its clock, not ours:
        // ours being unsynced says nothing about it, and it is never
        // corrected.
        let reading = Reading {
            device: self.device.name.clone(),
            ts_ms: parsed.ts_ms.unwrap_or(stamp.wall_ms),
            mono_ms: stamp.mono_ms,
            unsynced: stamp.unsynced && parsed.ts_ms.is_none(),
            values: parsed.values,
            quality: Quality::Good,
            error: None,
            delivery: self.delivery,
        };
        self.ingest.append(reading).await.map_err(|_| ())
    }
}

/// The next write request; never resolves once every handle is gone.
async fn recv(inbox: &mut Option<mpsc::Receiver<WriteRequest>>) -> WriteRequest {
    if let Some(rx) = inbox
        && let Some(request) = rx.recv().await
    {
        return request;
    }
    *inbox = None;
    std::future::pending().await
}

/// The start of a bad line for the log, with unprintable bytes escaped.
fn preview(line: &[u8]) -> String {
    const SHOWN: usize = 60;
    // Quoted and escaped once, here, and logged as it is (`%`): the
    // subscriber's own quoting on top would escape every escape again.
    let mut text = String::from("\"");
    let mut shown = 0;
    'line: for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            if shown == SHOWN {
                break 'line;
            }
            text.extend(c.escape_debug());
            shown += 1;
        }
        for b in chunk.invalid() {
            if shown == SHOWN {
                break 'line;
            }
            text.push_str(&format!("\\x{b:02x}"));
            shown += 1;
        }
    }
    text.push('"');
    let total: usize = line
        .utf8_chunks()
        .map(|c| c.valid().chars().count() + c.invalid().len())
        .sum();
    if total > SHOWN {
        text.push('…');
    }
    text
}

/// Lets a few bad-line messages per minute through and counts the rest.
#[derive(Debug, Default)]
struct LogLimit {
    window_start: Option<Instant>,
    logged: u32,
    unlogged: u64,
}

impl LogLimit {
    /// `Some(lines not logged since the last message)` when this one may
    /// be logged.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(60));
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < BAD_LINES_LOGGED_PER_MINUTE {
            self.logged += 1;
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_line_messages_are_limited_per_minute() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        let admitted = (0..100)
            .filter(|i| limit.admit(t0 + Duration::from_millis(*i)).is_some())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(limit.admit(t0 + Duration::from_secs(61)), Some(95));
        assert_eq!(limit.admit(t0 + Duration::from_secs(62)), Some(0));
    }

    #[test]
    fn previews_escape_once_and_shorten() {
        assert_eq!(preview(b"a\xff\tb"), r#""a\xff\tb""#);
        assert_eq!(
            preview("{\"t\": \"21.5 °C\"}".as_bytes()),
            r#""{\"t\": \"21.5 °C\"}""#
        );
        let long = preview(&[b'x'; 100]);
        assert_eq!(long, format!("\"{}\"…", "x".repeat(60)));
        assert_eq!(preview("é".repeat(60).as_bytes()).chars().count(), 62);
    }
}
