//! The attempts both connections (telemetry and commands) make: a spread
//! first one, then one connection at a time, through the brokers in order,
//! with backoff between them, until shutdown.
//!
//! After a connection that got as far as the broker's CONNACK the next
//! attempt goes to the first broker again (it is the preferred one); after
//! a failed attempt it goes to the next broker in the list.
//!
//! The caller keeps the loop (and its connection) itself: a future that
//! borrows its state across an async callback is not `Send` to the
//! compiler, and both connections run on spawned tasks.

use tokio_util::sync::CancellationToken;

use super::Settings;
use crate::backoff::{self, Backoff};
use crate::config::BrokerUrl;

/// What to do next.
pub(super) enum Next<'a> {
    Connect(&'a BrokerUrl),
    /// Shutdown came.
    Stop,
    /// There is no broker to connect to.
    NoBroker,
}

pub(super) struct Attempts<'a> {
    settings: &'a Settings,
    /// Told how long each connection lasted, by the caller.
    pub(super) backoff: Backoff,
    next: usize,
    first: bool,
    role: Role,
}

/// Which connection makes the attempts. Its debug line about the delay
/// has the target of that connection's module (`RUST_LOG` filters and
/// tests name it), not this one's.
#[derive(Clone, Copy)]
pub(super) enum Role {
    Telemetry,
    Commands,
}

impl<'a> Attempts<'a> {
    pub(super) fn new(settings: &'a Settings, role: Role) -> Self {
        Attempts {
            settings,
            backoff: Backoff::new(settings.backoff_min, settings.backoff_max)
                .stable_after(settings.stable_after),
            next: 0,
            first: true,
            role,
        }
    }

    /// Waits (the start jitter before the first attempt, the backoff delay
    /// before the others) and says where to connect.
    pub(super) async fn next(&mut self, shutdown: &CancellationToken) -> Next<'a> {
        let delay = if self.first {
            self.first = false;
            // Gateways powered up together (after a power cut) spread
            // their first connections.
            backoff::start_jitter(self.settings.connect_jitter)
        } else {
            let delay = self.backoff.next_delay();
            match self.role {
                Role::Telemetry => {
                    tracing::debug!(target: "fieldgate::uplink", "reconnecting in {delay:?}");
                }
                Role::Commands => tracing::debug!(
                    target: "fieldgate::uplink::downstream",
                    "downstream: reconnecting in {delay:?}"
                ),
            }
            delay
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Next::Stop,
            _ = tokio::time::sleep(delay) => {}
        }
        match self.settings.brokers.get(self.next) {
            Some(broker) => Next::Connect(broker),
            None => Next::NoBroker,
        }
    }

    /// The last attempt's connection is over; `connected` if the broker
    /// had accepted it.
    pub(super) fn lost(&mut self, connected: bool) {
        self.next = if connected {
            0
        } else {
            (self.next + 1) % self.settings.brokers.len()
        };
    }
}
