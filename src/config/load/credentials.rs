//! How the gateway logs in to the broker: checks that need to know which
//! keys a `FIELDGATE__…` variable set.

use super::super::MqttConfig;
use super::super::env::from_variable;
use super::super::yaml::Node;
use super::Problem;

/// The keys that each give the password, in the order the uplink prefers.
const SECRETS: [&str; 4] = ["password", "password_file", "token_file", "token_command"];

/// Problems of the login settings, as unplaced problems (path, message).
/// `root` is the checked tree, to tell a variable's value from the file's.
pub(super) fn problems(mqtt: &MqttConfig, root: &Node) -> Vec<Problem> {
    let mut found = Vec::new();
    let set: Vec<&str> = SECRETS
        .into_iter()
        .zip([
            mqtt.password.is_some(),
            mqtt.password_file.is_some(),
            mqtt.token_file.is_some(),
            mqtt.token_command.is_some(),
        ])
        .filter_map(|(key, on)| on.then_some(key))
        .collect();
    let path = |key: &str| format!("mqtt.{key}");
    if set.len() > 1 {
        // A variable set on top of a file that has another secret (the
        // README's FIELDGATE__MQTT__PASSWORD beside the example's
        // password_file) is what to name: the file alone was fine.
        let by_variable = set
            .iter()
            .find(|key| from_variable(root.locate(&path(key))));
        let blamed = by_variable.copied().unwrap_or(set[1]);
        let others: Vec<String> = set
            .iter()
            .filter(|key| **key != blamed)
            .map(|key| {
                let node = root.locate(&path(key));
                if from_variable(node) {
                    format!("`{key}` (also from a variable)")
                } else {
                    format!("`{key}` (line {})", node.mark.line)
                }
            })
            .collect();
        found.push(unplaced(
            path(blamed),
            format!(
                "set only one of `password`, `password_file`, `token_file`, `token_command`; also set: {}",
                others.join(", ")
            ),
        ));
    }
    let no_username = mqtt.username.as_deref().is_none_or(str::is_empty);
    if let (Some(first), true) = (set.first(), no_username) {
        found.push(unplaced(
            path(first),
            "a password needs `username` too: brokers refuse a login without a user name".into(),
        ));
    }
    found
}

fn unplaced(path: String, message: String) -> Problem {
    Problem {
        mark: None,
        path,
        message,
        variable: None,
    }
}
