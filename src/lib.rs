//! fieldgate: an IoT edge gateway. Sources (Modbus, serial, BLE, simulated)
//! feed a SQLite store-and-forward queue that one MQTT uplink drains, so
//! that every reading reaches the broker through outages and restarts.
//!
//! The modules form layers; each names only the layers below it, so the
//! tree reads as the data flow and a type lives below everything that
//! uses it (`layers_test` below fails on a name that points upwards):
//!
//! 1. shared vocabulary: [`reading`] (a `Reading`, its quality, QoS and
//!    priority), [`clock`], [`backoff`], [`health`] (the counters);
//! 2. [`config`]: every section and every device kind's settings;
//! 3. [`store`]: the SQLite outbox and what else must survive a restart;
//! 4. [`sources`] and [`uplink`], which never name each other: sources put
//!    readings into the store, the uplink takes rows out of it;
//! 5. [`commands`];
//! 6. [`metrics`], [`service`] (systemd), [`resident`] (memory) and
//!    [`time_sync`] (honest timestamps);
//! 7. [`gateway`], which wires everything together; the CLI (`src/cli/`,
//!    `src/main.rs`) is the binary on top.

pub mod backoff;
pub mod clock;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod reading;
pub mod resident;
pub mod service;
pub mod sources;
pub mod store;
pub mod time_sync;
pub mod uplink;

#[cfg(test)]
mod layers_test;

/// The version printed by `fieldgate version` and sent in the birth message.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
