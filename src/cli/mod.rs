//! Subcommands with more than a few lines of their own.

pub mod ble;
pub mod check;
pub mod config;
pub mod queue;
