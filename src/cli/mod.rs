//! Subcommands with more than a few lines of their own.

pub mod ble;
pub mod config;
pub mod queue;
