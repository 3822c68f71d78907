//! The task that owns one bus: it polls every device on it in turn, one
//! request at a time, and carries out point writes between polls.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_modbus::{Request, Response};
use tokio_util::sync::CancellationToken;

use super::link::{Failure, ModbusLink};
use super::poll::Poller;
use super::value::Write;
use crate::clock::Deadline;
use crate::config::modbus::ModbusDevice;
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
    #[error("busy: {WRITES_WAITING} writes already wait for the bus of device `{0}`")]
    Busy(String),
    #[error("expired while it waited for the bus; not written")]
    Expired,
}

impl WriteError {
    /// Refused before anything was sent (as opposed to failed on the bus).
    pub fn is_rejected(&self) -> bool {
        !matches!(
            self,
            WriteError::Failed { .. } | WriteError::Stopped(_) | WriteError::Expired
        )
    }
}

/// Writes that may wait for one bus; more are answered busy at once, so
/// that a flood of commands costs neither memory nor the polls their turn.
pub const WRITES_WAITING: usize = 16;

/// A write waiting for its turn on the bus.
pub struct Job {
    device: usize,
    point: String,
    write: Write,
    /// Past it, the write is not sent: it waited too long for its turn.
    deadline: Deadline,
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
    /// confirmed the write, or once `deadline` passed before its turn came.
    pub async fn write(
        &self,
        device: &str,
        point: &str,
        value: &Value,
        deadline: Deadline,
    ) -> Result<(), WriteError> {
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
            deadline,
            reply,
        };
        let stopped = || WriteError::Stopped(device.to_owned());
        crate::sources::hand_over(
            &self.jobs,
            job,
            WriteError::Busy(device.to_owned()),
            stopped(),
        )?;
        answer.await.map_err(|_| stopped())?
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
                if job.deadline.passed() {
                    let _ = job.reply.send(Err(WriteError::Expired));
                    continue;
                }
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
