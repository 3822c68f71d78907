//! Subcommands with more than a few lines of their own.

pub mod config;
pub mod queue;
