//! Messages in the words of the file: serde speaks of Rust types (`expected
//! struct ModbusPoint`, `expected u64`, `unknown variant`), the user wrote
//! YAML. And a near miss of a key or value gets the nearest valid one.

use super::Problem;

/// Rewrites every message for the user; the positions and paths stay.
pub(super) fn polish(problems: &mut [Problem]) {
    for p in problems {
        p.message = suggest(&plain(&p.message));
    }
}

/// The message without Rust type names.
fn plain(message: &str) -> String {
    let mut message = message.replacen("unknown variant `", "unknown value `", 1);
    let kinds = [
        ("sequence", "list"),
        ("map", "mapping"),
        ("unit value", "null"),
    ];
    for (rust, yaml) in kinds {
        let prefix = format!("invalid type: {rust},");
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = format!("invalid type: {yaml},{rest}");
        }
    }
    match message.rsplit_once(", expected ") {
        Some((head, tail)) => match expected(tail) {
            Some(words) => format!("{head}, expected {words}"),
            None => message,
        },
        None => message,
    }
}

/// What serde's `expecting` text means, when it names a Rust type.
fn expected(tail: &str) -> Option<String> {
    let simple = match tail {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        "a map" => "a mapping",
        "unit" | "unit variant" => "nothing",
        "a borrowed string" | "a string" | "a character" | "char" => "text",
        "internally tagged enum DeviceConfig" => "a device (a mapping with a `kind`)",
        "struct Config" => "a mapping with gateway, mqtt and devices",
        _ => "",
    };
    if !simple.is_empty() {
        return Some(simple.to_owned());
    }
    let (shape, name) = tail.split_once(' ')?;
    let named = |suffix: &str| {
        let words = type_words(name);
        match words.as_str() {
            "" => format!("a mapping of {suffix}"),
            _ => format!("a mapping of {words} {suffix}"),
        }
    };
    match shape {
        "struct" => Some(named("settings")),
        "enum" => Some(format!("a {} value", type_words(name))),
        "tuple" | "newtype" => None,
        _ => None,
    }
    .filter(|_| name.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// `ModbusPoint` as `modbus point`, `GatewayConfig` as `gateway`.
fn type_words(name: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for c in name.chars() {
        match words.last_mut() {
            Some(word) if !c.is_ascii_uppercase() => word.push(c),
            _ => words.push(c.to_ascii_lowercase().to_string()),
        }
    }
    if words.last().is_some_and(|w| w == "config") {
        words.pop();
    }
    words.join(" ")
}

/// "unknown key `pol`, expected one of `id`, `poll`" gets "did you mean
/// `poll`?" when one candidate is close; so does an invalid value whose
/// valid spellings the message lists.
fn suggest(message: &str) -> String {
    let Some((head, tail)) = message.split_once(", expected ") else {
        return message.to_owned();
    };
    let given = ["unknown key `", "unknown value `", "unknown kind `"]
        .iter()
        .find_map(|prefix| head.strip_prefix(prefix)?.strip_suffix('`'))
        .or_else(|| {
            head.strip_prefix("invalid value: string \"")?
                .strip_suffix('"')
        });
    let Some(given) = given else {
        return message.to_owned();
    };
    match nearest(given, &candidates(tail)) {
        Some(best) => format!("{head}, did you mean `{best}`? Expected {tail}"),
        None => message.to_owned(),
    }
}

/// The words of "one of `a`, `b`" or "\"3.1.1\" or \"5\"".
fn candidates(tail: &str) -> Vec<&str> {
    let mut found = Vec::new();
    for quote in ['`', '"'] {
        let parts: Vec<&str> = tail.split(quote).collect();
        found.extend(parts.iter().skip(1).step_by(2));
    }
    found
}

/// The candidate closest to `given`, if it is close enough to be a slip:
/// one edit in a short word, two in a longer one, three in a long one.
fn nearest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given = given.to_lowercase();
    let allowed = match given.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (distance(&given, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insert, delete, replace, swap two neighbours) from `a` to `b`.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_type_names_become_words() {
        let cases = [
            (
                "invalid type: string \"x\", expected struct ModbusPoint",
                "invalid type: string \"x\", expected a mapping of modbus point settings",
            ),
            (
                "invalid type: null, expected struct GatewayConfig",
                "invalid type: null, expected a mapping of gateway settings",
            ),
            (
                "invalid type: sequence, expected f64",
                "invalid type: list, expected a number",
            ),
            (
                "invalid type: map, expected u8",
                "invalid type: mapping, expected an integer from 0 to 255",
            ),
            (
                "invalid type: string \"1\", expected u64",
                "invalid type: string \"1\", expected a whole number, 0 or more",
            ),
            (
                "invalid type: unit value, expected u16",
                "invalid type: null, expected an integer from 0 to 65535",
            ),
            (
                "invalid type: sequence, expected enum Parity",
                "invalid type: list, expected a parity value",
            ),
            (
                "invalid type: string \"x\", expected internally tagged enum DeviceConfig",
                "invalid type: string \"x\", expected a device (a mapping with a `kind`)",
            ),
            // Words of our own are left alone.
            (
                "invalid duration `often`, expected a duration such as 5s",
                "invalid duration `often`, expected a duration such as 5s",
            ),
        ];
        for (serde, user) in cases {
            assert_eq!(plain(serde), user);
        }
    }

    #[test]
    fn a_near_miss_gets_the_nearest_valid_word() {
        let cases = [
            (
                "unknown variant `holdng`, expected one of `coil`, `discrete`, `input`, `holding`",
                "unknown value `holdng`, did you mean `holding`? Expected one of `coil`, `discrete`, `input`, `holding`",
            ),
            (
                "unknown key `pasword`, expected one of `username`, `password`, `password_file`",
                "unknown key `pasword`, did you mean `password`? Expected one of `username`, `password`, `password_file`",
            ),
            (
                "unknown kind `modbsu`, expected one of `simulated`, `modbus`",
                "unknown kind `modbsu`, did you mean `modbus`? Expected one of `simulated`, `modbus`",
            ),
            (
                "invalid value: string \"3.11\", expected \"3.1.1\" or \"5\"",
                "invalid value: string \"3.11\", did you mean `3.1.1`? Expected \"3.1.1\" or \"5\"",
            ),
            // Far from everything: no guess.
            (
                "unknown key `retain_everything`, expected one of `url`, `qos`",
                "unknown key `retain_everything`, expected one of `url`, `qos`",
            ),
            (
                "unknown value `f64`, expected one of `f32`, `u16`",
                "unknown value `f64`, expected one of `f32`, `u16`",
            ),
        ];
        for (before, after) in cases {
            assert_eq!(suggest(&plain(before)), after);
        }
        assert_eq!(distance("hodling", "holding"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(nearest("POLL", &["poll", "pull"]), Some("poll"));
    }
}
