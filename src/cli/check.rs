//! `fieldgate check`: every problem of a configuration in one pass, and the
//! warnings; with `--remote`, a remote configuration checked against the
//! local file before it is pushed.

use std::path::Path;
use std::process::ExitCode;

use fieldgate::config::{self, ConfigError};

// One mapping of configuration errors to exit codes, shared with `run`.
use crate::config_failure as failure;

/// Prints `OK` (warnings on stderr) or every problem, with the exit codes
/// of `run`: 0, or 2 when a configuration is invalid.
pub fn run(file: &Path, remote: Option<&Path>) -> ExitCode {
    let checked = match config::check(file) {
        Ok(checked) => checked,
        Err(e) => return failure(e),
    };
    let warnings = &checked.warnings;
    let warn = || {
        if !warnings.problems.is_empty() {
            eprintln!("{warnings}");
        }
    };
    let local = match checked.result {
        Ok(local) => local,
        Err(e) => {
            // The problems first: they are what must be fixed.
            let code = failure(e);
            warn();
            if let Some(remote) = remote {
                eprintln!(
                    "{} not checked: the local file is invalid",
                    remote.display()
                );
            }
            return code;
        }
    };
    warn();
    if let Some(remote) = remote {
        let text = match std::fs::read_to_string(remote) {
            Ok(text) => text,
            Err(source) => {
                return failure(ConfigError::Read {
                    path: remote.display().to_string(),
                    source,
                });
            }
        };
        // The gateway's own check, so the remote document gets exactly the
        // rules it would meet on `P/config/set`.
        let merged = match config::load_remote(&text, &local) {
            Ok(merged) => merged,
            Err(e) => return failure(named(e, remote)),
        };
        let warnings = config::remote_warnings(&text, &merged, &remote.display().to_string());
        if !warnings.problems.is_empty() {
            eprintln!("{warnings}");
        }
    }
    // A closed stdout (`check | head -0`) is no failure: the check passed.
    let _ = super::outln!("OK");
    ExitCode::SUCCESS
}

/// The remote document's problems under its file name.
fn named(e: ConfigError, file: &Path) -> ConfigError {
    match e {
        ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
            file: file.display().to_string(),
            problems,
        },
        other => other,
    }
}
