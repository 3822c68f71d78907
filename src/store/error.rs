//! What can go wrong in the store, for every part of it.

use super::schema;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error("cannot move the damaged store {path} aside: {source}")]
    MoveAside {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store has schema version {found}, newer than this binary's {}: upgrade fieldgate or move the store aside",
        schema::SCHEMA_VERSION
    )]
    NewerSchema { found: i64 },
    #[error("the store has no tables yet")]
    Uninitialized,
    #[error(
        "the store has schema version {found}, older than this binary's {}: start the gateway once to upgrade it",
        schema::SCHEMA_VERSION
    )]
    OlderSchema { found: i64 },
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// The disk refused a write for lack of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}
