//! The cached remote configuration: what the cloud last sent and the
//! gateway applied, so that a Pi that boots offline runs it again.

use rusqlite::{OptionalExtension, params};

use super::{Outbox, StoreError};

/// A remote configuration as received: its version and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub version: String,
    pub text: String,
    /// When it was applied, in milliseconds since the epoch.
    pub at_ms: i64,
}

impl Outbox {
    /// The cached remote configuration, if one was applied.
    pub fn remote_config(&self) -> Result<Option<RemoteConfig>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT version, text, at_ms FROM config_cache WHERE slot = 'devices'",
                [],
                |r| {
                    Ok(RemoteConfig {
                        version: r.get(0)?,
                        text: r.get(1)?,
                        at_ms: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Replaces the cached remote configuration (one transaction).
    pub fn save_remote_config(&mut self, config: &RemoteConfig) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO config_cache (slot, version, text, at_ms) VALUES ('devices', ?1, ?2, ?3)",
            params![config.version, config.text, config.at_ms],
        )?;
        Ok(())
    }

    /// Forgets the remote configuration; returns whether there was one.
    pub fn clear_remote_config(&mut self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM config_cache WHERE slot = 'devices'", [])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::outbox::tests::open;
    use super::*;

    #[test]
    fn the_remote_configuration_is_cached_replaced_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        assert_eq!(store.remote_config().unwrap(), None);
        let first = RemoteConfig {
            version: "v1".into(),
            text: "devices: []".into(),
            at_ms: 1,
        };
        store.save_remote_config(&first).unwrap();
        let second = RemoteConfig {
            version: "v2".into(),
            text: "devices: [x]".into(),
            at_ms: 2,
        };
        store.save_remote_config(&second).unwrap();
        drop(store);
        let mut store = open(&dir, Limits::default());
        assert_eq!(store.remote_config().unwrap(), Some(second));
        assert!(store.clear_remote_config().unwrap());
        assert!(!store.clear_remote_config().unwrap());
        assert_eq!(store.remote_config().unwrap(), None);
    }
}
