//! Writes to the `writable` characteristics of `gatt` devices: checked and
//! encoded here, written by the device's connection task.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::decode::value;
use crate::clock::Deadline;
use crate::config::ble::{BleDevice, Characteristic};

/// How long a write may wait for the connection (which may be down, or
/// reconnecting) before it fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a write to a BLE device failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("point `{0}` is not a writable characteristic")]
    NotWritable(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("the device is not connected ({0})")]
    NotConnected(String),
    #[error("write failed: {0}")]
    Failed(String),
    #[error("the device's source has stopped")]
    Stopped,
    #[error("busy: {WRITES_WAITING} writes already wait for this device")]
    Busy,
    #[error("expired while it waited for the connection; not written")]
    Expired,
}

/// Writes that may wait for one device; more are answered busy at once.
const WRITES_WAITING: usize = 16;

impl WriteError {
    /// Refused before anything was sent to the device.
    pub fn is_rejected(&self) -> bool {
        matches!(
            self,
            WriteError::NotWritable(_) | WriteError::InvalidValue(_) | WriteError::Busy
        )
    }
}

/// One write, for the connection task.
#[derive(Debug)]
pub struct WriteRequest {
    pub point: String,
    pub bytes: Vec<u8>,
    /// Past it, the write is not sent.
    pub deadline: Deadline,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// The receiving end, taken by each connection of the device in turn.
pub type Requests = Arc<Mutex<mpsc::Receiver<WriteRequest>>>;

/// Writes one `gatt` device's writable characteristics.
#[derive(Clone)]
pub struct GattHandle {
    characteristics: Arc<Vec<Characteristic>>,
    requests: mpsc::Sender<WriteRequest>,
}

impl GattHandle {
    pub fn new(device: &BleDevice) -> (GattHandle, Requests) {
        let (tx, rx) = mpsc::channel(WRITES_WAITING);
        let handle = GattHandle {
            characteristics: Arc::new(
                device
                    .characteristics
                    .iter()
                    .filter(|c| c.writable)
                    .cloned()
                    .collect(),
            ),
            requests: tx,
        };
        (handle, Arc::new(Mutex::new(rx)))
    }

    /// Encodes `value` for `point` and writes it (with response); returns
    /// once the device acknowledged the write.
    pub async fn write(
        &self,
        point: &str,
        value: &Value,
        deadline: Deadline,
    ) -> Result<(), WriteError> {
        let c = self
            .characteristics
            .iter()
            .find(|c| c.point.as_str() == point)
            .ok_or_else(|| WriteError::NotWritable(point.to_owned()))?;
        let number = match value {
            Value::Bool(b) => f64::from(u8::from(*b)),
            v => v
                .as_f64()
                .ok_or_else(|| WriteError::InvalidValue(format!("{v} is not a number")))?,
        };
        let bytes = value::encode(c, number).map_err(|e| WriteError::InvalidValue(e.0))?;
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            point: point.to_owned(),
            bytes,
            deadline,
            reply,
        };
        crate::sources::hand_over(
            &self.requests,
            request,
            WriteError::Busy,
            WriteError::Stopped,
        )?;
        match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
            Ok(answer) => answer.map_err(|_| WriteError::Stopped)?,
            Err(_) => Err(WriteError::NotConnected(format!(
                "no connection within {WRITE_TIMEOUT:?}"
            ))),
        }
    }
}
