//! Subcommands with more than a few lines of their own.

/// `println!` that returns the write error instead of panicking on it:
/// `fieldgate queue stats | head -1` closes the pipe early, and `main`
/// then exits quietly (see `is_broken_pipe`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

/// `print!` that returns the write error, as `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)
    }};
}

pub(crate) use outln;

pub mod ble;
pub mod check;
pub mod config;
pub mod queue;
