//! fieldgate: an IoT edge gateway. Sources (Modbus, serial, BLE, simulated)
//! feed a SQLite store-and-forward queue that one MQTT uplink drains, so
//! that every reading reaches the broker through outages and restarts.

pub mod commands;
pub mod config;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod service;
pub mod sources;
pub mod store;
pub mod uplink;

/// The version printed by `fieldgate version` and sent in the birth message.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
