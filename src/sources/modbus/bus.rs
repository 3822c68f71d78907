//! The task that owns one bus: it polls every device on it in turn, one
//! request at a time, and carries out point writes between polls.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_modbus::{Request, Response};
use tokio_util::sync::CancellationToken;

use super::link::{Failure, ModbusLink};
use super::plan::{Block, plan};
use super::publish::{PointResult, Publisher};
use super::value::{Layout, Raw, RegisterKind, Write};
use crate::config::modbus::ModbusDevice;
use crate::health::DeviceHealth;
use crate::reading::Delivery;
use crate::reading::Reading;
use crate::sources::Ingest;

/// Why a point write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("no Modbus device `{0}`")]
    UnknownDevice(String),
    #[error("device `{device}` has no point `{point}`")]
    UnknownPoint { device: String, point: String },
    #[error("point `{0}` is not writable")]
    NotWritable(String),
    #[error("invalid value for `{point}`: {reason}")]
    InvalidValue { point: String, reason: String },
    /// The device did not take the value: no answer, an exception, …
    #[error("write to `{point}` failed: {reason}")]
    Failed { point: String, reason: String },
    #[error("the bus of device `{0}` has stopped")]
    Stopped(String),
}

impl WriteError {
    /// Refused before anything was sent (as opposed to failed on the bus).
    pub fn is_rejected(&self) -> bool {
        !matches!(self, WriteError::Failed { .. } | WriteError::Stopped(_))
    }
}

/// A write waiting for its turn on the bus.
pub struct Job {
    device: usize,
    point: String,
    write: Write,
    reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Writes points of the devices on one bus, in turn with the polls.
#[derive(Clone)]
pub struct BusHandle {
    jobs: mpsc::Sender<Job>,
    devices: Arc<[Arc<ModbusDevice>]>,
}

impl BusHandle {
    pub fn new(jobs: mpsc::Sender<Job>, devices: Vec<Arc<ModbusDevice>>) -> BusHandle {
        let devices = devices.into();
        BusHandle { jobs, devices }
    }

    /// Sets `point` of `device` to `value` (an engineering value: scale and
    /// offset are undone, `min` and `max` checked), with function 5 (a coil),
    /// 6 (one register) or 16 (several registers). Returns once the device
    /// confirmed the write.
    pub async fn write(&self, device: &str, point: &str, value: &Value) -> Result<(), WriteError> {
        let (index, config) = self
            .devices
            .iter()
            .enumerate()
            .find(|(_, d)| d.name.as_str() == device)
            .ok_or_else(|| WriteError::UnknownDevice(device.to_owned()))?;
        let spec = config
            .points
            .iter()
            .find(|p| p.name.as_str() == point)
            .ok_or_else(|| WriteError::UnknownPoint {
                device: device.to_owned(),
                point: point.to_owned(),
            })?;
        if !spec.writable {
            return Err(WriteError::NotWritable(point.to_owned()));
        }
        let invalid = |reason: String| WriteError::InvalidValue {
            point: point.to_owned(),
            reason,
        };
        if let Some(x) = value.as_f64() {
            if spec.min.is_some_and(|min| x < min) {
                return Err(invalid(format!(
                    "{x} is below min {}",
                    spec.min.unwrap_or_default()
                )));
            }
            if spec.max.is_some_and(|max| x > max) {
                return Err(invalid(format!(
                    "{x} is above max {}",
                    spec.max.unwrap_or_default()
                )));
            }
        }
        let write = spec
            .layout(config.address_base.get())
            .encode(value)
            .map_err(invalid)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            device: index,
            point: point.to_owned(),
            write,
            reply,
        };
        let stopped = || WriteError::Stopped(device.to_owned());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// One device on the bus and its polling state.
pub struct Poller {
    device: Arc<ModbusDevice>,
    layouts: Vec<Layout>,
    blocks: Vec<Block>,
    delivery: Delivery,
    health: Arc<DeviceHealth>,
    publisher: Publisher,
    /// The last poll got no answer at all: poll once, without retries.
    silent: bool,
    next_due: Instant,
}

impl Poller {
    pub fn new(device: Arc<ModbusDevice>, delivery: Delivery, health: Arc<DeviceHealth>) -> Poller {
        let layouts = device.layouts();
        let blocks = plan(&layouts, device.limits());
        let deadbands = device
            .points
            .iter()
            .map(|p| (p.name.to_string(), p.deadband));
        let publisher = Publisher::new(deadbands, device.heartbeat.get());
        tracing::debug!(device = %device.name, reads = blocks.len(), "register map planned");
        Poller {
            device,
            layouts,
            blocks,
            delivery,
            health,
            publisher,
            silent: false,
            next_due: Instant::now(),
        }
    }

    /// Reads every block once; a device that does not answer costs one
    /// timeout (times `1 + retries` if it answered the poll before).
    async fn poll(&mut self, link: &mut ModbusLink) -> Vec<PointResult> {
        let mut outcomes: Vec<PointResult> = vec![Err(String::new()); self.layouts.len()];
        let attempts = if self.silent {
            1
        } else {
            1 + self.device.retries.get()
        };
        let (unit, wait) = (self.device.unit, self.device.timeout.get());
        // Once the device is silent, the rest of the poll would only wait
        // for more timeouts.
        let mut silence: Option<String> = None;
        for block in &self.blocks {
            let result = match &silence {
                Some(reason) => Err(reason.clone()),
                None => match read(link, unit, wait, block, attempts).await {
                    Ok(answer) => Ok(answer),
                    Err(failure) => {
                        self.health.errors.fetch_add(1, Relaxed);
                        if failure.is_bad_input() {
                            self.health.bad_input.fetch_add(1, Relaxed);
                        }
                        let reason = if failure.is_silence() {
                            failure.to_string()
                        } else {
                            format!("{}: {failure}", describe(block))
                        };
                        if failure.is_silence() {
                            silence = Some(reason.clone());
                        }
                        Err(reason)
                    }
                },
            };
            for &i in &block.points {
                outcomes[i] = match &result {
                    Ok(answer) => {
                        let offset = block.offset_of(&self.layouts[i]);
                        let decoded = self.layouts[i].decode(answer.at(offset));
                        if decoded.is_err() {
                            self.health.bad_input.fetch_add(1, Relaxed);
                        }
                        decoded
                    }
                    Err(reason) => Err(reason.clone()),
                };
            }
        }
        self.silent = silence.is_some();
        outcomes
    }

    /// Polls, publishes what is due, and logs a change of fault.
    async fn poll_and_publish(&mut self, link: &mut ModbusLink, ingest: &Ingest) -> bool {
        let ts_ms = ingest.clock().now_ms();
        let outcomes = self.poll(link).await;
        // Remembered here, not only from what is published: a deadband
        // holds back values that were read all the same.
        self.health
            .remember(ts_ms, &self.publisher.values_read(&outcomes));
        let publication = self.publisher.publish(outcomes, Instant::now());
        let fault = self.publisher.fault().map(str::to_owned);
        if self.health.set_problem(fault.clone()) {
            let (device, bus) = (&self.device.name, link.endpoint());
            match fault {
                Some(fault) => tracing::warn!(%device, %bus, "{fault}"),
                None => tracing::info!(%device, %bus, "reading again"),
            }
        }
        let Some(publication) = publication else {
            return true;
        };
        let reading = Reading {
            device: self.device.name.clone(),
            ts_ms,
            values: publication.values,
            quality: publication.quality,
            error: publication.error,
            delivery: self.delivery,
        };
        ingest.append(reading).await.is_ok()
    }

    /// The next poll: one period after this one started, so that a poll
    /// made late by a slow bus is not followed by a hurried one.
    fn schedule_next(&mut self, started: Instant) {
        self.next_due = started + self.device.poll.get();
    }
}

/// `holding 100-109`: a block, in the words of the configuration.
fn describe(block: &Block) -> String {
    let last = u32::from(block.start) + u32::from(block.count).max(1) - 1;
    format!("reading {} {}-{last}", block.register.as_str(), block.start)
}

/// A read's answer.
enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Answer {
    fn at(&self, offset: usize) -> Raw<'_> {
        match self {
            Answer::Words(w) => Raw::Words(w.get(offset..).unwrap_or_default()),
            Answer::Bits(b) => Raw::Bits(b.get(offset..).unwrap_or_default()),
        }
    }
}

/// One block, tried up to `attempts` times (an exception is final).
async fn read(
    link: &mut ModbusLink,
    unit: u8,
    wait: Duration,
    block: &Block,
    attempts: u64,
) -> Result<Answer, Failure> {
    let (start, count) = (block.start, block.count);
    let mut last = Failure::Timeout(wait);
    for _ in 0..attempts.max(1) {
        let request = match block.register {
            RegisterKind::Coil => Request::ReadCoils(start, count),
            RegisterKind::Discrete => Request::ReadDiscreteInputs(start, count),
            RegisterKind::Input => Request::ReadInputRegisters(start, count),
            RegisterKind::Holding => Request::ReadHoldingRegisters(start, count),
        };
        let failure = match link.call(unit, request, wait).await {
            Ok(response) => match checked(response, count) {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            },
            Err(failure) => failure,
        };
        if matches!(failure, Failure::Exception(_)) {
            return Err(failure);
        }
        last = failure;
    }
    Err(last)
}

/// The answer's items, if there are as many as requested.
fn checked(response: Response, count: u16) -> Result<Answer, Failure> {
    let count = usize::from(count);
    let short = |got: usize, what: &str| {
        Failure::Mismatch(format!("{got} {what} for a request of {count}"))
    };
    match response {
        Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits) => {
            // Bits come in whole bytes: the padding is dropped.
            if bits.len() < count {
                return Err(short(bits.len(), "bits"));
            }
            bits.truncate(count);
            Ok(Answer::Bits(bits))
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            if words.len() != count {
                return Err(short(words.len(), "registers"));
            }
            Ok(Answer::Words(words))
        }
        other => Err(Failure::Mismatch(format!("{other:?}"))),
    }
}

/// Carries out one write and checks the device's echo.
async fn execute(
    link: &mut ModbusLink,
    device: &ModbusDevice,
    write: Write,
) -> Result<(), Failure> {
    let (unit, wait) = (device.unit, device.timeout.get());
    let (request, echo) = match write {
        Write::Coil { address, value } => (
            Request::WriteSingleCoil(address, value),
            Response::WriteSingleCoil(address, value),
        ),
        Write::Register { address, value } => (
            Request::WriteSingleRegister(address, value),
            Response::WriteSingleRegister(address, value),
        ),
        Write::Registers { address, values } => {
            let count = u16::try_from(values.len()).unwrap_or(u16::MAX);
            (
                Request::WriteMultipleRegisters(address, Cow::Owned(values)),
                Response::WriteMultipleRegisters(address, count),
            )
        }
    };
    let response = link.call(unit, request, wait).await?;
    if response == echo {
        Ok(())
    } else {
        Err(Failure::Mismatch(format!(
            "{response:?}, expected {echo:?}"
        )))
    }
}

/// Runs one bus until cancelled: polls each device when it is due, and
/// carries out writes as they come, never two requests at once.
pub async fn run(
    mut link: ModbusLink,
    mut pollers: Vec<Poller>,
    mut jobs: mpsc::Receiver<Job>,
    ingest: Ingest,
    cancel: CancellationToken,
) {
    tracing::info!(bus = %link.endpoint(), devices = pollers.len(), "modbus bus started");
    while let Some(next) = (0..pollers.len()).min_by_key(|&i| pollers[i].next_due) {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(job) = jobs.recv() => {
                let poller = &mut pollers[job.device];
                let result = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = execute(&mut link, &poller.device, job.write) => r,
                };
                if let Err(e) = &result {
                    tracing::warn!(device = %poller.device.name, point = %job.point, "write failed: {e}");
                } else {
                    // Read the new value back soon.
                    poller.next_due = Instant::now();
                }
                let point = job.point;
                let _ = job.reply.send(result.map_err(|e| WriteError::Failed {
                    point,
                    reason: e.to_string(),
                }));
            }
            _ = sleep_until(pollers[next].next_due) => {
                let poller = &mut pollers[next];
                let started = Instant::now();
                let appended = tokio::select! {
                    _ = cancel.cancelled() => break,
                    ok = poller.poll_and_publish(&mut link, &ingest) => ok,
                };
                if !appended {
                    break; // the store is shutting down
                }
                poller.schedule_next(started);
            }
        }
    }
    tracing::debug!(bus = %link.endpoint(), "modbus bus stopped");
}
