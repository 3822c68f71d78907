//! Which stored row each MQTT packet id stands for, until its ack.
//!
//! rumqttc 0.25 does not return packet ids from `publish()`; it reports
//! them later as `Outgoing::Publish(pkid)` events in request order. So we
//! keep our publishes in a FIFO and pair each event with its front. Two
//! traps shape the rest: a packet id can be handed out again while an older
//! QoS 2 message with that id is between PUBREC and PUBCOMP, so messages
//! waiting for PUBACK/PUBREC and those waiting for PUBCOMP live in separate
//! maps, each a queue per id; and a colliding publish is first announced as
//! `AwaitAck(pkid)` and sent (as `Outgoing::Publish`) only once that id is
//! free, before any newer request.

use std::collections::{HashMap, VecDeque};

use crate::reading::Qos;
use crate::store::RowKey;

/// A message whose delivery we track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// Stored readings (one, or a batch): deleted from the store once
    /// delivered.
    Rows(Vec<RowKey>, Qos),
    /// A gateway message (status): nothing to delete.
    Control(Qos),
}

impl Tracked {
    fn qos(&self) -> Qos {
        match self {
            Tracked::Rows(_, qos) | Tracked::Control(qos) => *qos,
        }
    }
    fn into_rows(self) -> Vec<RowKey> {
        match self {
            Tracked::Rows(rows, _) => rows,
            Tracked::Control(_) => Vec::new(),
        }
    }
}

/// Delivery state of one MQTT connection. Dropped on any disconnect: the
/// rows stay in the store and are sent again on the next connection.
#[derive(Debug, Default)]
pub struct Inflight {
    /// Handed to rumqttc, no packet id seen yet.
    requested: VecDeque<Tracked>,
    /// Announced by `AwaitAck`: its id was busy; rumqttc sends it next.
    collided: Option<Tracked>,
    /// QoS 1 until PUBACK, QoS 2 until PUBREC.
    await_ack: HashMap<u16, VecDeque<Tracked>>,
    /// QoS 2 from PUBREC until PUBCOMP.
    await_comp: HashMap<u16, VecDeque<Tracked>>,
    outstanding: usize,
}

/// Something arrived that matches nothing we sent: rumqttc and we disagree,
/// so the connection's bookkeeping cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} for packet id {1} matches no message in flight")]
pub struct Mismatch(pub &'static str, pub u16);

impl Inflight {
    /// Messages handed to rumqttc and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The rows of each publish on the wire that the broker has not
    /// acknowledged at all (no PUBACK, no PUBREC), oldest first.
    pub fn unacknowledged(&self) -> Vec<Vec<RowKey>> {
        let mut found: Vec<Vec<RowKey>> = self
            .await_ack
            .values()
            .flatten()
            .filter_map(|t| match t {
                Tracked::Rows(rows, _) if !rows.is_empty() => Some(rows.clone()),
                _ => None,
            })
            .collect();
        found.sort_by_key(|rows| rows.first().map(|k| (k.priority, k.seq)));
        found
    }

    /// Call right after a successful `try_publish`.
    pub fn requested(&mut self, message: Tracked) {
        self.requested.push_back(message);
        self.outstanding += 1;
    }

    /// `Outgoing::AwaitAck(pkid)`: the front request waits for a busy id.
    pub fn await_ack_event(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let message = self
            .requested
            .pop_front()
            .ok_or(Mismatch("AwaitAck", pkid))?;
        self.collided = Some(message);
        Ok(())
    }

    /// `Outgoing::Publish(pkid)`: the message is on the wire. Returns the
    /// rows it completes (QoS 0 is done once written).
    pub fn published(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = match self.collided.take() {
            Some(m) => m,
            None => self
                .requested
                .pop_front()
                .ok_or(Mismatch("Publish", pkid))?,
        };
        if message.qos() == Qos::AtMostOnce {
            return Ok(self.done(message));
        }
        self.await_ack.entry(pkid).or_default().push_back(message);
        Ok(Vec::new())
    }

    /// `PUBACK`: completes a QoS 1 message (delivered, or refused by an
    /// MQTT 5 broker: the caller knows which).
    pub fn puback(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = pop(&mut self.await_ack, pkid).ok_or(Mismatch("PUBACK", pkid))?;
        Ok(self.done(message))
    }

    /// `PUBREC`: a QoS 2 message is received; it completes at PUBCOMP.
    pub fn pubrec(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let message = pop(&mut self.await_ack, pkid).ok_or(Mismatch("PUBREC", pkid))?;
        self.await_comp.entry(pkid).or_default().push_back(message);
        Ok(())
    }

    /// A `PUBREC` with a failure reason: the exchange ends there.
    pub fn pubrec_refused(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = pop(&mut self.await_ack, pkid).ok_or(Mismatch("PUBREC", pkid))?;
        Ok(self.done(message))
    }

    /// `PUBCOMP`: completes a QoS 2 message.
    pub fn pubcomp(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = pop(&mut self.await_comp, pkid).ok_or(Mismatch("PUBCOMP", pkid))?;
        Ok(self.done(message))
    }

    fn done(&mut self, message: Tracked) -> Vec<RowKey> {
        self.outstanding -= 1;
        message.into_rows()
    }
}

fn pop(map: &mut HashMap<u16, VecDeque<Tracked>>, pkid: u16) -> Option<Tracked> {
    let queue = map.get_mut(&pkid)?;
    let message = queue.pop_front();
    if queue.is_empty() {
        map.remove(&pkid);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Priority;

    fn row(seq: i64, qos: Qos) -> Tracked {
        Tracked::Rows(key(seq), qos)
    }
    fn key(seq: i64) -> Vec<RowKey> {
        vec![RowKey {
            priority: Priority::Normal,
            seq,
        }]
    }

    #[test]
    fn qos0_completes_when_written() {
        let mut f = Inflight::default();
        f.requested(row(1, Qos::AtMostOnce));
        assert_eq!(f.outstanding(), 1);
        assert_eq!(f.published(0), Ok(key(1)));
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn qos1_completes_at_puback_only() {
        let mut f = Inflight::default();
        f.requested(row(1, Qos::AtLeastOnce));
        f.requested(row(2, Qos::AtLeastOnce));
        assert_eq!(f.published(1), Ok(vec![]));
        assert_eq!(f.published(2), Ok(vec![]));
        assert_eq!(f.puback(2), Ok(key(2)));
        assert_eq!(f.puback(1), Ok(key(1)));
        assert_eq!(f.puback(1), Err(Mismatch("PUBACK", 1)));
        assert_eq!(f.outstanding(), 0);
    }

    /// The rumqttc trap: id 1 is reused by a new QoS 2 message while the
    /// old one still waits for its PUBCOMP. Each ack must complete the
    /// message it belongs to.
    #[test]
    fn reused_id_between_pubrec_and_pubcomp_keeps_rows_apart() {
        let mut f = Inflight::default();
        f.requested(row(10, Qos::ExactlyOnce));
        f.published(1).unwrap();
        f.pubrec(1).unwrap();
        f.requested(row(11, Qos::ExactlyOnce));
        f.published(1).unwrap(); // same id, old one not complete
        assert_eq!(f.pubcomp(1), Ok(key(10)));
        f.pubrec(1).unwrap();
        assert_eq!(f.pubcomp(1), Ok(key(11)));
        assert_eq!(f.outstanding(), 0);
        // A QoS 1 message reusing the id of a QoS 2 awaiting PUBCOMP.
        f.requested(row(12, Qos::ExactlyOnce));
        f.requested(row(13, Qos::AtLeastOnce));
        f.published(3).unwrap();
        f.pubrec(3).unwrap();
        f.published(3).unwrap();
        assert_eq!(f.puback(3), Ok(key(13)));
        assert_eq!(f.pubcomp(3), Ok(key(12)));
    }

    #[test]
    fn a_collided_publish_keeps_its_place() {
        let mut f = Inflight::default();
        f.requested(row(1, Qos::AtLeastOnce));
        f.published(1).unwrap();
        f.requested(row(2, Qos::AtLeastOnce));
        f.requested(row(3, Qos::AtLeastOnce));
        // Row 2 got id 1 again while row 1 is unacked: announced, held back.
        f.await_ack_event(1).unwrap();
        assert_eq!(f.puback(1), Ok(key(1)));
        f.published(1).unwrap(); // row 2, sent after the ack
        f.published(2).unwrap(); // row 3
        assert_eq!(f.puback(2), Ok(key(3)));
        assert_eq!(f.puback(1), Ok(key(2)));
    }

    #[test]
    fn a_batch_completes_all_its_rows_and_a_refused_pubrec_ends_the_exchange() {
        let mut f = Inflight::default();
        let keys: Vec<RowKey> = (1..=3)
            .map(|seq| RowKey {
                priority: Priority::High,
                seq,
            })
            .collect();
        f.requested(Tracked::Rows(keys.clone(), Qos::ExactlyOnce));
        f.requested(row(9, Qos::ExactlyOnce));
        f.published(4).unwrap();
        f.published(5).unwrap();
        assert_eq!(f.pubrec_refused(5), Ok(key(9)));
        f.pubrec(4).unwrap();
        assert_eq!(f.pubcomp(4), Ok(keys));
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn control_messages_count_but_delete_nothing() {
        let mut f = Inflight::default();
        f.requested(Tracked::Control(Qos::AtLeastOnce));
        f.published(1).unwrap();
        assert_eq!(f.puback(1), Ok(vec![]));
        assert_eq!(f.outstanding(), 0);
        assert_eq!(f.published(5), Err(Mismatch("Publish", 5)));
    }
}
