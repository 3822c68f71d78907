//! The setup most end-to-end tests share, so each test states only what
//! differs: its devices, its extra config keys, how it starts the gateway.
//! The subscriber connects before any gateway starts, so it misses nothing
//! the gateway publishes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::{Broker, Gateway, Message, Subscriber, distinct_seqs, write_config_with_store};

/// The filter of a subscriber to every reading of gateway `gw`.
pub const TELEMETRY: &str = "fieldgate/gw/telemetry/#";

/// A broker, a subscriber on it, and a directory holding a gateway config
/// that points at the broker.
pub struct Rig {
    // Fields drop in this order: the subscriber says goodbye while its
    // broker is still there.
    pub sub: Subscriber,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub broker: Broker,
}

impl Rig {
    /// Subscriber `client` on `filter`; a config with `devices`.
    pub fn new(client: &str, filter: &str, devices: &str) -> Rig {
        Rig::with(client, filter, "", "", devices)
    }

    /// As [`Rig::new`], with extra `store:` and `mqtt:` keys.
    pub fn with(client: &str, filter: &str, store: &str, mqtt: &str, devices: &str) -> Rig {
        let broker = Broker::start();
        let sub = Subscriber::connect(broker.port, client, filter);
        let dir = tempfile::tempdir().unwrap();
        let config = write_config_with_store(dir.path(), broker.port, store, mqtt, devices);
        Rig {
            sub,
            dir,
            config,
            broker,
        }
    }

    /// A gateway running the config, logging in the rig's directory.
    pub fn gateway(&self) -> Gateway {
        Gateway::start(&self.config, self.dir.path())
    }

    /// Waits until `pred` holds for what the subscriber received; fails
    /// the test with `gw`'s log if it does not within `timeout`.
    #[track_caller]
    pub fn expect(&self, gw: &Gateway, timeout: Duration, pred: impl Fn(&[Message]) -> bool) {
        assert!(self.sub.wait_until(timeout, pred), "{}", gw.log());
    }

    /// Waits until every seq of `want` (readings the store had committed)
    /// arrived at least once; fails naming some that did not.
    #[track_caller]
    pub fn expect_seqs(&self, gw: &Gateway, timeout: Duration, want: &BTreeSet<i64>) {
        let all = |m: &[Message]| {
            let seqs = distinct_seqs(m);
            want.iter().all(|s| seqs.contains(s))
        };
        let complete = self.sub.wait_until(timeout, all);
        let seqs = distinct_seqs(&self.sub.messages());
        let missing: Vec<i64> = want
            .iter()
            .copied()
            .filter(|s| !seqs.contains(s))
            .take(10)
            .collect();
        assert!(
            complete,
            "committed seqs missing, e.g. {missing:?}\n{}",
            gw.log()
        );
    }
}
