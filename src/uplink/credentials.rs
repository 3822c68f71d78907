//! Username and password for the next connection. Files and commands are
//! read again before every connection, so an outside agent can rotate a
//! short-lived token without restarting the gateway.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{Credentials, Secret};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} is empty")]
    Empty(String),
    #[error("token command `{0}` failed: {1}")]
    Command(String, String),
}

/// How long a `token_command` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `None` when the broker takes anonymous connections.
pub async fn resolve(
    credentials: &Credentials,
) -> Result<Option<(String, String)>, CredentialError> {
    let secret = match &credentials.secret {
        Secret::None => return Ok(credentials.username.clone().map(|u| (u, String::new()))),
        Secret::Password(p) => p.clone(),
        Secret::PasswordFile(path) => {
            warn_if_readable_by_others(path);
            read_trimmed(path)?
        }
        Secret::TokenFile(path) => read_trimmed(path)?,
        Secret::TokenCommand(command) => run(command).await?,
    };
    Ok(Some((
        credentials.username.clone().unwrap_or_default(),
        secret,
    )))
}

fn read_trimmed(path: &Path) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CredentialError::Read(path.display().to_string(), e))?;
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        return Err(CredentialError::Empty(path.display().to_string()));
    }
    Ok(text)
}

async fn run(command: &str) -> Result<String, CredentialError> {
    let failed = |why: String| CredentialError::Command(command.to_owned(), why);
    let child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child)
        .await
        .map_err(|_| failed(format!("no answer within {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!("{}: {}", output.status, stderr.trim())));
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if token.is_empty() {
        return Err(failed("it printed nothing".into()));
    }
    Ok(token)
}

/// A password file others can read is a leak waiting to happen; say so
/// once, not at every reconnect.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o004 != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "{} is readable by every user on this machine: chmod 600 it",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn creds(secret: Secret) -> Credentials {
        Credentials {
            username: Some("gw".into()),
            secret,
        }
    }

    #[tokio::test]
    async fn files_are_read_again_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "first\n").unwrap();
        let c = creds(Secret::TokenFile(token.clone()));
        assert_eq!(
            resolve(&c).await.unwrap(),
            Some(("gw".into(), "first".into()))
        );
        std::fs::write(&token, "second").unwrap();
        assert_eq!(
            resolve(&c).await.unwrap(),
            Some(("gw".into(), "second".into()))
        );
        std::fs::write(&token, "\n").unwrap();
        assert!(matches!(resolve(&c).await, Err(CredentialError::Empty(_))));
        let missing = creds(Secret::PasswordFile(PathBuf::from("/nonexistent/pass")));
        assert!(
            resolve(&missing)
                .await
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/pass")
        );
    }

    #[tokio::test]
    async fn token_command_output_is_the_password() {
        let c = creds(Secret::TokenCommand("printf 'tok-123\\n'".into()));
        assert_eq!(
            resolve(&c).await.unwrap(),
            Some(("gw".into(), "tok-123".into()))
        );
        let failing = creds(Secret::TokenCommand("echo nope >&2; exit 3".into()));
        let err = resolve(&failing).await.unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("exit status: 3"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn anonymous_and_plain_password() {
        let none = Credentials {
            username: None,
            secret: Secret::None,
        };
        assert_eq!(resolve(&none).await.unwrap(), None);
        let plain = creds(Secret::Password("pw".into()));
        assert_eq!(
            resolve(&plain).await.unwrap(),
            Some(("gw".into(), "pw".into()))
        );
    }
}
