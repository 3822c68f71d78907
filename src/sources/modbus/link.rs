//! One connection to a bus (a serial port or a TCP endpoint) and the
//! request/answer exchange over it: every request has a timeout, every
//! answer is checked, and a lost connection is reopened with backoff.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, ProtocolError, Request, Response, Slave};

use crate::backoff::Backoff;
use crate::config::modbus::{Framing, Parity, RtuPort, TcpEndpoint};

/// Where a bus is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Rtu(RtuPort),
    Tcp(TcpEndpoint),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Rtu(rtu) => f.write_str(&rtu.port),
            Endpoint::Tcp(tcp) => write!(f, "{}:{}", tcp.host, tcp.port),
        }
    }
}

/// Why a request got no usable answer. The texts stay the same from one
/// poll to the next, so that a lasting fault is reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing came back in time.
    Timeout(Duration),
    /// Bytes came back, but no valid frame: a bad CRC, noise, a partial frame.
    Garbled(Duration),
    /// The device refused the request.
    Exception(ExceptionCode),
    /// An answer that does not fit the request (another unit's, a late one,
    /// the wrong length).
    Mismatch(String),
    /// The connection failed or was lost; it is reopened.
    ModbusLink(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(t) => write!(f, "no answer within {}", crate::config::Duration(*t)),
            Failure::Garbled(t) => write!(
                f,
                "no valid answer within {} (bad CRC or garbled frame)",
                crate::config::Duration(*t)
            ),
            Failure::Exception(code) => {
                write!(f, "exception {:#04x} ({code})", u8::from(*code))
            }
            Failure::Mismatch(why) => write!(f, "unexpected answer: {why}"),
            Failure::ModbusLink(why) => f.write_str(why),
        }
    }
}

impl Failure {
    /// Whether the device (or the bus) is not answering at all, so that the
    /// rest of this poll would only wait for more timeouts.
    pub fn is_silence(&self) -> bool {
        matches!(self, Failure::Timeout(_) | Failure::ModbusLink(_))
    }

    /// Whether the answer was there but unusable (counted as bad input).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Failure::Garbled(_) | Failure::Mismatch(_))
    }
}

/// After this many timeouts in a row with no answer from any unit, the
/// connection (or the serial port: its adapter may be gone) is taken for
/// dead and reopened.
const STALE_AFTER: u32 = 3;

/// The connection to one bus, opened on demand.
pub struct ModbusLink {
    endpoint: Endpoint,
    context: Option<Context>,
    line: Arc<LineState>,
    backoff: Backoff,
    /// No new connection attempt before this.
    retry_at: Option<Instant>,
    /// Why the last attempt to connect failed, reported while waiting.
    connect_error: String,
    timeouts_in_a_row: u32,
    /// RTU: the silence a frame needs before the next one (3.5 characters).
    frame_gap: Duration,
    last_exchange: Option<Instant>,
}

impl ModbusLink {
    pub fn new(endpoint: Endpoint) -> ModbusLink {
        let frame_gap = match &endpoint {
            // 3.5 characters of 11 bits, and at least 1.75ms above 19200 baud.
            Endpoint::Rtu(rtu) => Duration::from_micros(
                (38_500_000 / u64::from(rtu.baud.max(1))).clamp(1_750, 1_000_000),
            ),
            Endpoint::Tcp(_) => Duration::ZERO,
        };
        ModbusLink {
            endpoint,
            context: None,
            line: Arc::default(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            retry_at: None,
            connect_error: String::new(),
            timeouts_in_a_row: 0,
            frame_gap,
            last_exchange: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `request` to `unit` and waits up to `wait` for its answer.
    pub async fn call(
        &mut self,
        unit: u8,
        request: Request<'static>,
        wait: Duration,
    ) -> Result<Response, Failure> {
        // An unplugged USB adapter takes its device node along, but an open
        // port does not always report it.
        if let Endpoint::Rtu(rtu) = &self.endpoint
            && self.context.is_some()
            && !std::path::Path::new(&rtu.port).exists()
        {
            self.drop_connection();
        }
        self.connect(wait).await?;
        if let Some(last) = self.last_exchange {
            sleep_until(last + self.frame_gap).await;
        }
        let Some(context) = self.context.as_mut() else {
            return Err(Failure::ModbusLink(self.connect_error.clone()));
        };
        context.set_slave(Slave(unit));
        self.line.new_request.store(true, Relaxed);
        let result = timeout(wait, context.call(request)).await;
        self.last_exchange = Some(Instant::now());
        let failure = match result {
            Ok(Ok(Ok(response))) => {
                self.timeouts_in_a_row = 0;
                return Ok(response);
            }
            Ok(Ok(Err(code))) => Failure::Exception(code),
            // The same words every time (the error itself carries the
            // answer's data), so that a lasting fault is reported once.
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Failure::Mismatch(match e {
                ProtocolError::HeaderMismatch { .. } => {
                    "the answer of another unit or an earlier request".into()
                }
                ProtocolError::FunctionCodeMismatch { .. } => {
                    "the answer to another function".into()
                }
            }),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.drop_connection();
                Failure::ModbusLink(format!("connection to {} lost: {e}", self.endpoint))
            }
            Err(_) if self.line.received.load(Relaxed) > 0 => Failure::Garbled(wait),
            Err(_) => {
                self.timeouts_in_a_row += 1;
                if self.timeouts_in_a_row >= STALE_AFTER {
                    self.drop_connection();
                }
                return Err(Failure::Timeout(wait));
            }
        };
        // Whatever came back, the line is alive.
        self.timeouts_in_a_row = 0;
        Err(failure)
    }

    fn drop_connection(&mut self) {
        self.context = None;
        self.timeouts_in_a_row = 0;
    }

    /// Opens the port or connection unless it is open or waiting out a
    /// backoff after a failed attempt.
    async fn connect(&mut self, wait: Duration) -> Result<(), Failure> {
        if self.context.is_some() {
            return Ok(());
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(Failure::ModbusLink(self.connect_error.clone()));
        }
        let line = self.line.clone();
        let opened = match &self.endpoint {
            Endpoint::Rtu(rtu) => open_serial(rtu)
                .map(|port| tokio_modbus::client::rtu::attach(Line::new(port, line))),
            Endpoint::Tcp(tcp) => {
                let address = (tcp.host.as_str(), tcp.port);
                match timeout(
                    wait.max(Duration::from_secs(1)),
                    TcpStream::connect(address),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        let stream = Line::new(stream, line);
                        Ok(match tcp.framing {
                            Framing::Tcp => tokio_modbus::client::tcp::attach(stream),
                            Framing::Rtu => tokio_modbus::client::rtu::attach(stream),
                        })
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
                }
            }
        };
        match opened {
            Ok(context) => {
                tracing::debug!(bus = %self.endpoint, "opened");
                self.context = Some(context);
                self.retry_at = None;
                self.backoff.reset();
                self.last_exchange = None;
                Ok(())
            }
            Err(e) => {
                self.connect_error = match &self.endpoint {
                    Endpoint::Rtu(rtu) => format!("cannot open {}: {e}", rtu.port),
                    Endpoint::Tcp(_) => format!("cannot connect to {}: {e}", self.endpoint),
                };
                self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                Err(Failure::ModbusLink(self.connect_error.clone()))
            }
        }
    }
}

fn open_serial(rtu: &RtuPort) -> io::Result<tokio_serial::SerialStream> {
    use tokio_serial::{DataBits, Parity as SerialParity, StopBits};
    let parity = match rtu.parity {
        Parity::None => SerialParity::None,
        Parity::Even => SerialParity::Even,
        Parity::Odd => SerialParity::Odd,
    };
    let data_bits = match rtu.data_bits.get() {
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let stop_bits = match rtu.stop_bits.get() {
        2 => StopBits::Two,
        _ => StopBits::One,
    };
    let builder = tokio_serial::new(&rtu.port, rtu.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits);
    tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)
}

/// What the link and its transport share.
#[derive(Default)]
struct LineState {
    /// Set by the link before each request; the transport clears it when
    /// it starts writing that request.
    new_request: AtomicBool,
    /// Bytes received since the current request was sent.
    received: AtomicUsize,
}

/// A transport that throws away whatever arrived before a request is sent:
/// a late answer to an earlier request must not pass for the answer to the
/// next one. It also counts the bytes that came back since, which tells a
/// garbled answer from silence.
struct Line<T> {
    io: T,
    state: Arc<LineState>,
}

impl<T> Line<T> {
    fn new(io: T, state: Arc<LineState>) -> Line<T> {
        Line { io, state }
    }
}

impl<T> fmt::Debug for Line<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Line")
    }
}

impl<T: AsyncRead + Unpin> Line<T> {
    /// Reads and drops what is waiting now, without blocking.
    fn discard_stale(&mut self, cx: &mut TaskContext<'_>) {
        let mut dropped = 0;
        let mut buf = [0u8; 256];
        // Bounded: a line that never stops talking must not hold us here.
        for _ in 0..64 {
            let mut chunk = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.io).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(())) if !chunk.filled().is_empty() => {
                    dropped += chunk.filled().len()
                }
                _ => break,
            }
        }
        if dropped > 0 {
            tracing::debug!(bytes = dropped, "dropped a stale answer");
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Line<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len() - before;
            self.state.received.fetch_add(n, Relaxed);
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Line<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state.new_request.swap(false, Relaxed) {
            self.discard_stale(cx);
            self.state.received.store(0, Relaxed);
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_late_answer_is_dropped_before_the_next_request() {
        let (near, mut far) = tokio::io::duplex(1024);
        let state = Arc::new(LineState::default());
        let mut line = Line::new(near, state.clone());

        state.new_request.store(true, Relaxed);
        line.write_all(b"request 1").await.unwrap();
        // The answer to request 1 comes after its timeout...
        far.write_all(b"late answer").await.unwrap();
        tokio::task::yield_now().await;

        // ... and is gone when request 2 is sent.
        state.new_request.store(true, Relaxed);
        line.write_all(b"request 2").await.unwrap();
        let mut sent = [0u8; 18];
        far.read_exact(&mut sent).await.unwrap();
        assert_eq!(&sent, b"request 1request 2");
        assert_eq!(state.received.load(Relaxed), 0);
        far.write_all(b"answer 2").await.unwrap();
        let mut answer = [0u8; 8];
        line.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer 2");
        assert_eq!(
            state.received.load(Relaxed),
            8,
            "counted, to tell garbage from silence"
        );
    }

    #[test]
    fn fault_texts_stay_the_same_from_poll_to_poll() {
        let second = Duration::from_secs(1);
        assert_eq!(Failure::Timeout(second).to_string(), "no answer within 1s");
        assert_eq!(
            Failure::Exception(ExceptionCode::IllegalDataAddress).to_string(),
            "exception 0x02 (Illegal data address)"
        );
        assert!(Failure::Garbled(second).to_string().contains("bad CRC"));
    }
}
