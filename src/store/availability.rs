//! Device availability: each device's current state, kept durably, and
//! the retained messages that tell the broker about its changes.
//!
//! A change and its message are written in one transaction, so the table
//! and the queue never disagree: the uplink can publish the table again
//! on every connection (the broker may have lost its retained messages),
//! and the queued messages, sent after that in `seq` order, end on the
//! same state. A change to the state already stored writes nothing, so a
//! restarted group (or gateway) does not repeat what the broker has.

use rusqlite::{OptionalExtension, Transaction, params};

use super::outbox::{RowKind, reserve};
use super::{Outbox, StoreError};
use crate::reading::{Priority, Qos};

/// Whether a device reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Online,
    Offline,
}

impl DeviceState {
    /// The payload of its retained message.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Offline => "offline",
        }
    }

    fn parse(text: &str) -> Option<DeviceState> {
        match text {
            "online" => Some(DeviceState::Online),
            "offline" => Some(DeviceState::Offline),
            _ => None,
        }
    }
}

/// Availability messages are few and must get through first: high
/// priority, QoS 1, as the gateway's own retained status.
const PRIORITY: Priority = Priority::High;
const QOS: Qos = Qos::AtLeastOnce;

impl Outbox {
    /// Records `state` for `device` and queues its message, unless it is
    /// the state stored already. Returns whether it changed.
    pub fn set_availability(
        &mut self,
        device: &str,
        state: DeviceState,
        ts_ms: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT state FROM availability WHERE device = ?1",
                [device],
                |r| r.get(0),
            )
            .optional()?;
        if stored.as_deref() == Some(state.as_str()) {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO availability (device, state, at_ms) VALUES (?1, ?2, ?3)",
            params![device, state.as_str(), ts_ms],
        )?;
        let seq = queue(&tx, self.next_seq, device, state.as_str(), ts_ms)?;
        let reserved = reserve(&tx, seq, self.reserved)?;
        tx.commit()?;
        self.next_seq = seq;
        self.reserved = reserved.unwrap_or(self.reserved);
        Ok(true)
    }

    /// Forgets every device not in `keep` and queues an empty retained
    /// message for each, which removes its state at the broker. Returns
    /// the devices forgotten.
    pub fn forget_availability(
        &mut self,
        keep: &[String],
        ts_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let gone: Vec<String> = self
            .availability()?
            .into_iter()
            .map(|(device, _)| device)
            .filter(|device| !keep.contains(device))
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let tx = self.conn.transaction()?;
        let mut seq = self.next_seq;
        for device in &gone {
            tx.execute("DELETE FROM availability WHERE device = ?1", [device])?;
            seq = queue(&tx, seq, device, "", ts_ms)?;
        }
        let reserved = reserve(&tx, seq, self.reserved)?;
        tx.commit()?;
        self.next_seq = seq;
        self.reserved = reserved.unwrap_or(self.reserved);
        Ok(gone)
    }

    /// Every device's stored state, by device name.
    pub fn availability(&self) -> Result<Vec<(String, DeviceState)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device, state FROM availability ORDER BY device")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut states = Vec::new();
        for row in rows {
            let (device, state) = row?;
            // Written only by this file; anything else is skipped, not fatal.
            if let Some(state) = DeviceState::parse(&state) {
                states.push((device, state));
            }
        }
        Ok(states)
    }
}

/// Queues the retained message `payload` of `device` as row `seq`; returns
/// the next `seq` (the caller moves the counter on disk with [`reserve`]).
fn queue(
    tx: &Transaction<'_>,
    seq: i64,
    device: &str,
    payload: &str,
    ts_ms: i64,
) -> Result<i64, StoreError> {
    tx.execute(
        "INSERT INTO outbox (priority, seq, qos, ts_ms, device, quality, vals, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7)",
        params![
            PRIORITY as i64,
            seq,
            QOS as i64,
            ts_ms,
            device,
            payload,
            RowKind::Availability as i64
        ],
    )?;
    Ok(seq + 1)
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::outbox::tests::open;
    use super::*;

    fn queued(store: &Outbox) -> Vec<(String, String, RowKind)> {
        (store.fetch(PRIORITY, 0, 100).unwrap().into_iter())
            .map(|r| (r.device, r.values, r.kind))
            .collect()
    }

    #[test]
    fn only_changes_are_queued_and_the_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        assert!(
            store
                .set_availability("pump", DeviceState::Online, 1)
                .unwrap()
        );
        assert!(
            !store
                .set_availability("pump", DeviceState::Online, 2)
                .unwrap()
        );
        assert!(
            store
                .set_availability("pump", DeviceState::Offline, 3)
                .unwrap()
        );
        assert!(
            store
                .set_availability("fan", DeviceState::Online, 4)
                .unwrap()
        );
        let av = RowKind::Availability;
        assert_eq!(
            queued(&store),
            [
                ("pump".into(), "online".into(), av),
                ("pump".into(), "offline".into(), av),
                ("fan".into(), "online".into(), av),
            ]
        );
        assert_eq!(store.fetch(PRIORITY, 0, 1).unwrap()[0].qos, QOS);
        drop(store);

        let mut store = open(&dir, Limits::default());
        assert_eq!(
            store.availability().unwrap(),
            [
                ("fan".into(), DeviceState::Online),
                ("pump".into(), DeviceState::Offline)
            ]
        );
        // Stored before the restart: nothing new to say, nothing queued.
        let next = store.next_seq();
        assert!(
            !store
                .set_availability("pump", DeviceState::Offline, 5)
                .unwrap()
        );
        assert_eq!(store.next_seq(), next);
    }

    #[test]
    fn a_forgotten_device_gets_an_empty_message_and_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        store
            .set_availability("pump", DeviceState::Online, 1)
            .unwrap();
        store
            .set_availability("fan", DeviceState::Offline, 2)
            .unwrap();
        let gone = store.forget_availability(&["fan".into()], 3).unwrap();
        assert_eq!(gone, ["pump"]);
        assert_eq!(
            store.availability().unwrap(),
            [("fan".into(), DeviceState::Offline)]
        );
        let last = queued(&store).pop().unwrap();
        assert_eq!(last, ("pump".into(), String::new(), RowKind::Availability));
        assert!(
            store
                .forget_availability(&["fan".into()], 4)
                .unwrap()
                .is_empty()
        );
        // It starts from nothing if it comes back.
        assert!(
            store
                .set_availability("pump", DeviceState::Online, 5)
                .unwrap()
        );
    }
}
