//! The places the gateway reaches devices at, written the same way in
//! `remote_config.allow_endpoints` and in the messages that refuse one.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::config::ble::MacAddress;

/// Where a device is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Modbus TCP server: `tcp://10.0.0.5:502`, `tcp://[fd00::5]:502`
    /// (the port is 502 when left out).
    Tcp { host: String, port: u16 },
    /// A serial device, for Modbus RTU or `kind: serial`: `/dev/ttyUSB1`.
    Path(String),
    /// A BLE device by address: `ble:A4:C1:38:12:34:56`.
    Ble(MacAddress),
    /// A BLE device by the name it advertises: `ble-name:ATC_000001`.
    BleName(String),
}

const EXPECTED: &str = "expected tcp://HOST:PORT, a device path such as /dev/ttyUSB1, ble:A4:C1:38:12:34:56 or ble-name:NAME";

impl Endpoint {
    /// Host names are compared without case; IPv6 brackets are not part
    /// of the host.
    pub fn tcp(host: &str, port: u16) -> Endpoint {
        let host = host.strip_prefix('[').unwrap_or(host);
        let host = host.strip_suffix(']').unwrap_or(host);
        Endpoint::Tcp {
            host: host.to_ascii_lowercase(),
            port,
        }
    }

    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let invalid = |why: &str| format!("invalid endpoint `{text}`: {why}");
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = split_host_port(rest).ok_or_else(|| invalid(EXPECTED))?;
            let bad_host = host.is_empty() || host.contains(['/', ' ', '@', '?', '#']);
            if bad_host {
                return Err(invalid("expected a host name or IP address after tcp://"));
            }
            let port = match port {
                None => 502,
                Some(p) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(invalid("expected a port from 1 to 65535")),
                },
            };
            return Ok(Endpoint::tcp(host, port));
        }
        if let Some(rest) = text.strip_prefix("ble:") {
            return MacAddress::parse(rest)
                .map(Endpoint::Ble)
                .ok_or_else(|| invalid("expected six hex bytes such as A4:C1:38:12:34:56"));
        }
        if let Some(rest) = text.strip_prefix("ble-name:") {
            if rest.is_empty() {
                return Err(invalid("expected the advertised name after ble-name:"));
            }
            return Ok(Endpoint::BleName(rest.to_owned()));
        }
        if text.len() > 1 && text.starts_with('/') && !text.contains('\0') {
            return Ok(Endpoint::Path(text.to_owned()));
        }
        Err(invalid(EXPECTED))
    }
}

/// `host`, `host:port` or `[v6]:port`; a bare IPv6 address is ambiguous
/// and refused.
fn split_host_port(rest: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match rest.split_once(':') {
        Some((host, port)) if !port.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((rest, None)),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Path(path) => f.write_str(path),
            Endpoint::Ble(mac) => write!(f, "ble:{mac}"),
            Endpoint::BleName(name) => write!(f, "ble-name:{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Endpoint::parse(&text).map_err(serde::de::Error::custom)
    }
}
