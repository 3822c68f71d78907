//! Which stored row each MQTT packet id stands for, until its ack, and
//! which packet ids are free.
//!
//! rumqttc 0.25 does not return packet ids from `publish()`; it reports
//! them later as `Outgoing::Publish(pkid)` events in request order. So we
//! keep our publishes in a FIFO and pair each event with its front.
//!
//! Packet ids are ours to keep. rumqttc hands them out from a counter that
//! counts 1, 2, ... `limit` and starts again at 1, whatever is still in
//! flight: it would reuse an id whose QoS 2 exchange has sent PUBREL but
//! not received PUBCOMP (MQTT 3.1.1 §2.3.1 forbids that), and an id still
//! waiting for its PUBACK or PUBREC makes it hold the publish back and send
//! it, untracked, once the id is free, so that its PUBACK kills the
//! connection ("unsolicited ack"). Counting what is in flight does not
//! prevent either: acks come out of order (a QoS 1 message overtakes a
//! QoS 2 one), so the counter comes round to an id still busy while the
//! rest are long done. Instead we run the same counter here (one link,
//! hence one rumqttc state, per session: it starts at 1), know which id the
//! next publish will get, and hand rumqttc nothing that would
//! get a busy one: an id is busy from our request until its exchange
//! completes (PUBACK; PUBCOMP for QoS 2). An event that disagrees
//! with the counter is a [`Mismatch`], and ends the connection.

use std::collections::{HashMap, HashSet, VecDeque};

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
#[derive(Debug)]
pub struct Inflight {
    /// Handed to rumqttc, no packet id seen yet; with the id it will get
    /// (0 for QoS 0).
    requested: VecDeque<(Tracked, u16)>,
    /// QoS 1 until PUBACK, QoS 2 until PUBREC.
    await_ack: HashMap<u16, Tracked>,
    /// QoS 2 from PUBREC until PUBCOMP.
    await_comp: HashMap<u16, Tracked>,
    /// Every id in use, from our request until its exchange completes.
    busy: HashSet<u16>,
    /// rumqttc's counter: the id it handed out last (0: none, or wrapped).
    last_pkid: u16,
    /// Where rumqttc's counter wraps: its inflight setting (MQTT 5: or the
    /// broker's receive maximum, if lower).
    limit: u16,
    outstanding: usize,
}

/// Something arrived that matches nothing we sent: rumqttc and we disagree,
/// so the connection's bookkeeping cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} for packet id {1} matches no message in flight")]
pub struct Mismatch(pub &'static str, pub u16);

impl Inflight {
    /// For a rumqttc whose inflight setting is `limit`.
    pub fn new(limit: u16) -> Self {
        Inflight {
            requested: VecDeque::new(),
            await_ack: HashMap::new(),
            await_comp: HashMap::new(),
            busy: HashSet::new(),
            last_pkid: 0,
            limit: limit.max(1),
            outstanding: 0,
        }
    }

    /// MQTT 5: the broker's receive maximum, from its CONNACK (before any
    /// id is handed out), lowers where rumqttc's counter wraps.
    pub fn receive_maximum(&mut self, max: u16) {
        self.limit = self.limit.min(max.max(1));
    }

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
            .filter_map(|t| match t {
                Tracked::Rows(rows, _) if !rows.is_empty() => Some(rows.clone()),
                _ => None,
            })
            .collect();
        found.sort_by_key(|rows| rows.first().map(|k| (k.priority, k.seq)));
        found
    }

    /// Whether a message at `qos` may be handed to rumqttc now: QoS 0
    /// takes no id; otherwise the id it would get must be free.
    pub fn can_send(&self, qos: Qos) -> bool {
        qos == Qos::AtMostOnce || !self.busy.contains(&self.peek())
    }

    /// Call right after a successful `try_publish` (allowed by `can_send`).
    pub fn requested(&mut self, message: Tracked) {
        let pkid = match message.qos() {
            Qos::AtMostOnce => 0,
            _ => self.take(),
        };
        self.requested.push_back((message, pkid));
        self.outstanding += 1;
    }

    /// `Outgoing::AwaitAck(pkid)`: rumqttc found the id busy, which the
    /// ids kept here rule out.
    pub fn await_ack_event(&mut self, pkid: u16) -> Result<(), Mismatch> {
        Err(Mismatch("a publish held back (id busy)", pkid))
    }

    /// `Outgoing::Publish(pkid)`: the message is on the wire. Returns the
    /// rows it completes (QoS 0 is done once written).
    pub fn published(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let (message, expected) = self
            .requested
            .pop_front()
            .ok_or(Mismatch("Publish", pkid))?;
        if pkid != expected {
            return Err(Mismatch("Publish (not the id expected)", pkid));
        }
        if message.qos() == Qos::AtMostOnce {
            return Ok(self.done(message, None));
        }
        if self.await_ack.insert(pkid, message).is_some() {
            return Err(Mismatch("Publish (id in use)", pkid));
        }
        Ok(Vec::new())
    }

    /// `PUBACK`: completes a QoS 1 message (delivered, or refused by an
    /// MQTT 5 broker: the caller knows which).
    pub fn puback(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = self
            .await_ack
            .remove(&pkid)
            .filter(|m| m.qos() == Qos::AtLeastOnce);
        let message = message.ok_or(Mismatch("PUBACK", pkid))?;
        Ok(self.done(message, Some(pkid)))
    }

    /// `PUBREC`: a QoS 2 message is received; it completes at PUBCOMP.
    pub fn pubrec(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let message = self.take_qos2(pkid)?;
        self.await_comp.insert(pkid, message);
        Ok(())
    }

    /// A `PUBREC` with a failure reason: the exchange ends there.
    pub fn pubrec_refused(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = self.take_qos2(pkid)?;
        Ok(self.done(message, Some(pkid)))
    }

    /// `PUBCOMP`: completes a QoS 2 message.
    pub fn pubcomp(&mut self, pkid: u16) -> Result<Vec<RowKey>, Mismatch> {
        let message = self
            .await_comp
            .remove(&pkid)
            .ok_or(Mismatch("PUBCOMP", pkid))?;
        Ok(self.done(message, Some(pkid)))
    }

    fn take_qos2(&mut self, pkid: u16) -> Result<Tracked, Mismatch> {
        match self.await_ack.remove(&pkid) {
            Some(m) if m.qos() == Qos::ExactlyOnce => Ok(m),
            Some(m) => {
                self.await_ack.insert(pkid, m);
                Err(Mismatch("PUBREC", pkid))
            }
            None => Err(Mismatch("PUBREC", pkid)),
        }
    }

    fn done(&mut self, message: Tracked, pkid: Option<u16>) -> Vec<RowKey> {
        if let Some(pkid) = pkid {
            self.busy.remove(&pkid);
        }
        self.outstanding -= 1;
        message.into_rows()
    }

    /// The id rumqttc gives the next publish (QoS 1, 2).
    fn peek(&self) -> u16 {
        self.last_pkid + 1
    }

    /// rumqttc's `MqttState::next_pkid`, and the id is busy from now on.
    fn take(&mut self) -> u16 {
        let pkid = self.peek();
        self.last_pkid = if pkid >= self.limit { 0 } else { pkid };
        self.busy.insert(pkid);
        pkid
    }
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
    fn qos0_completes_when_written_and_takes_no_id() {
        let mut f = Inflight::new(10);
        f.requested(row(1, Qos::AtMostOnce));
        assert_eq!(f.outstanding(), 1);
        assert_eq!(f.published(0), Ok(key(1)));
        assert_eq!(f.outstanding(), 0);
        f.requested(row(2, Qos::AtLeastOnce));
        assert_eq!(f.published(1), Ok(vec![]));
    }

    #[test]
    fn qos1_completes_at_puback_only() {
        let mut f = Inflight::new(10);
        f.requested(row(1, Qos::AtLeastOnce));
        f.requested(row(2, Qos::AtLeastOnce));
        assert_eq!(f.published(1), Ok(vec![]));
        assert_eq!(f.published(2), Ok(vec![]));
        assert_eq!(f.puback(2), Ok(key(2)));
        assert_eq!(f.puback(1), Ok(key(1)));
        assert_eq!(f.puback(1), Err(Mismatch("PUBACK", 1)));
        assert_eq!(f.outstanding(), 0);
    }

    /// The ids wrap as rumqttc's do (1..=limit), and one whose QoS 2
    /// exchange waits for PUBCOMP is not handed out again: the next publish
    /// waits, even though everything else is done.
    #[test]
    fn an_id_waiting_for_pubcomp_is_not_reused() {
        let mut f = Inflight::new(3);
        f.requested(row(1, Qos::ExactlyOnce));
        f.requested(row(2, Qos::AtLeastOnce));
        f.requested(row(3, Qos::AtLeastOnce));
        f.published(1).unwrap();
        f.published(2).unwrap();
        f.published(3).unwrap();
        f.pubrec(1).unwrap();
        assert_eq!(f.puback(2), Ok(key(2)));
        assert_eq!(f.puback(3), Ok(key(3)));
        assert_eq!(f.outstanding(), 1);
        // rumqttc's counter is back at 1, still between PUBREC and PUBCOMP.
        assert!(!f.can_send(Qos::AtLeastOnce));
        assert!(!f.can_send(Qos::ExactlyOnce));
        assert!(f.can_send(Qos::AtMostOnce));
        assert_eq!(f.pubcomp(1), Ok(key(1)));
        assert!(f.can_send(Qos::AtLeastOnce));
        f.requested(row(4, Qos::AtLeastOnce));
        assert_eq!(f.published(1), Ok(vec![]));
        // Then 2, which is free.
        assert!(f.can_send(Qos::ExactlyOnce));
    }

    #[test]
    fn an_id_waiting_for_its_puback_or_pubrec_is_not_reused() {
        let mut f = Inflight::new(2);
        f.requested(row(1, Qos::ExactlyOnce));
        f.requested(row(2, Qos::AtLeastOnce));
        f.published(1).unwrap();
        f.published(2).unwrap();
        f.puback(2).unwrap();
        assert!(!f.can_send(Qos::AtLeastOnce), "id 1 waits for PUBREC");
        f.pubrec(1).unwrap();
        assert!(!f.can_send(Qos::AtLeastOnce), "id 1 waits for PUBCOMP");
        f.pubcomp(1).unwrap();
        assert!(f.can_send(Qos::AtLeastOnce));
    }

    /// An event with another id than the counter gave means rumqttc and we
    /// disagree; so does a publish it held back for a busy id.
    #[test]
    fn disagreements_are_mismatches() {
        let mut f = Inflight::new(10);
        f.requested(row(1, Qos::AtLeastOnce));
        assert!(f.published(2).is_err());
        let mut f = Inflight::new(10);
        f.requested(row(1, Qos::AtLeastOnce));
        assert!(f.await_ack_event(1).is_err());
        let mut f = Inflight::new(10);
        f.requested(row(1, Qos::AtLeastOnce));
        f.published(1).unwrap();
        assert_eq!(f.pubrec(1), Err(Mismatch("PUBREC", 1)));
        assert_eq!(f.puback(1), Ok(key(1)));
    }

    #[test]
    fn the_brokers_receive_maximum_moves_the_wrap() {
        let mut f = Inflight::new(100);
        f.receive_maximum(2);
        for seq in 1..=2 {
            f.requested(row(seq, Qos::AtLeastOnce));
        }
        f.published(1).unwrap();
        f.published(2).unwrap();
        assert!(!f.can_send(Qos::AtLeastOnce));
        f.puback(1).unwrap();
        f.requested(row(3, Qos::AtLeastOnce));
        assert_eq!(f.published(1), Ok(vec![]));
    }

    #[test]
    fn a_batch_completes_all_its_rows_and_a_refused_pubrec_ends_the_exchange() {
        let mut f = Inflight::new(10);
        let keys: Vec<RowKey> = (1..=3)
            .map(|seq| RowKey {
                priority: Priority::High,
                seq,
            })
            .collect();
        f.requested(Tracked::Rows(keys.clone(), Qos::ExactlyOnce));
        f.requested(row(9, Qos::ExactlyOnce));
        f.published(1).unwrap();
        f.published(2).unwrap();
        assert_eq!(f.pubrec_refused(2), Ok(key(9)));
        f.pubrec(1).unwrap();
        assert_eq!(f.pubcomp(1), Ok(keys));
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn control_messages_count_but_delete_nothing() {
        let mut f = Inflight::new(10);
        f.requested(Tracked::Control(Qos::AtLeastOnce));
        f.published(1).unwrap();
        assert_eq!(f.puback(1), Ok(vec![]));
        assert_eq!(f.outstanding(), 0);
        assert_eq!(f.published(5), Err(Mismatch("Publish", 5)));
    }
}
