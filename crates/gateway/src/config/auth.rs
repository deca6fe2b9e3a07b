//! `[auth]` and `[[auth.clients]]` (SPEC §7): who may use the public listener, what
//! each client may run, and its quotas.
//!
//! A client's key never appears in the file: it is written as the hex SHA-256 of the
//! key (`key_sha256`), or read from an environment variable (`key_env`) when the config
//! is loaded. Either way the gateway keeps only the digest, and `Debug` shows neither.

use std::fmt;

use agentgate_config::{Invalid, Validate};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Client names the gateway uses itself: `unknown` labels unauthorized requests in
/// metrics, `admin` the admin token's requests.
pub const RESERVED_CLIENT_NAMES: [&str; 2] = ["unknown", "admin"];

/// `auth.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AuthMode {
    /// `"none"` (default): anyone who reaches the public listener may use it.
    #[default]
    None,
    /// `"api_key"`: every public route but `/healthz` and `/readyz` needs a client's key.
    ApiKey,
}

/// The `[auth]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `"none"` (default) or `"api_key"`.
    pub mode: AuthMode,
    /// `[[auth.clients]]`: the principals, in file order.
    #[serde(deserialize_with = "agentgate_config::array_of_tables")]
    pub clients: Vec<ClientConfig>,
}

/// One `[[auth.clients]]` entry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The principal: the `client` label of metrics, the `client` of records and logs.
    pub name: String,
    /// Hex SHA-256 of the client's key (64 hex digits).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Or: the environment variable holding the key itself.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Pipelines it may run (`None`: all).
    #[serde(default)]
    pub pipelines: Option<Vec<String>>,
    /// Agents it may call through `/agents/*` (`None`: all).
    #[serde(default)]
    pub agents: Option<Vec<String>>,
    /// Queries it may have running at once, on all replicas together (`None`: no limit).
    #[serde(default)]
    pub max_running_queries: Option<u64>,
    /// Queries it may start per second, burst = rate (`None`: no limit).
    #[serde(default)]
    pub rate: Option<u32>,
}

// === impl AuthMode ===

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::ApiKey => "api_key",
        })
    }
}

impl<'de> Deserialize<'de> for AuthMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "none" => Ok(AuthMode::None),
            "api_key" => Ok(AuthMode::ApiKey),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Str(other),
                &"\"none\" or \"api_key\"",
            )),
        }
    }
}

// === impl AuthConfig ===

impl Validate for AuthConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.mode == AuthMode::ApiKey && self.clients.is_empty() {
            out.push(Invalid::new(
                "mode",
                "\"api_key\"",
                "needs at least one [[auth.clients]] with a name and a key_sha256 or key_env",
            ));
        }
        for (i, client) in self.clients.iter().enumerate() {
            let within = format!("clients[{i}]");
            out.extend(client.problems().into_iter().map(|p| p.within(&within)));
            let earlier = &self.clients[..i];
            if earlier.iter().any(|c| c.name == client.name) {
                let reason = "is used by an earlier client: names must be unique";
                out.push(Invalid::new(
                    format!("{within}.name"),
                    format!("{:?}", client.name),
                    reason,
                ));
            }
            let digest = client.digest().ok();
            if digest.is_some() && earlier.iter().any(|c| c.digest().ok() == digest) {
                let key = if client.key_env.is_some() {
                    "key_env"
                } else {
                    "key_sha256"
                };
                let reason = "gives the same key as an earlier client: keys must be unique";
                out.push(Invalid::named(format!("{within}.{key}"), reason));
            }
        }
        out
    }
}

// === impl ClientConfig ===

impl ClientConfig {
    /// The SHA-256 of the client's key: `key_sha256` decoded, or the digest of the
    /// value of `key_env` read now. Errors name the key and never show a key.
    pub fn digest(&self) -> Result<[u8; 32], Invalid> {
        match (&self.key_sha256, &self.key_env) {
            (Some(hex), None) => decode_sha256(hex).ok_or_else(|| {
                Invalid::named(
                    "key_sha256",
                    "must be 64 hex digits (the SHA-256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`)",
                )
            }),
            (None, Some(var)) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Ok(Sha256::digest(key.as_bytes()).into()),
                _ => Err(Invalid::named(
                    "key_env",
                    format!("the environment variable `{var}` is not set (or empty)"),
                )),
            },
            (Some(_), Some(_)) => Err(Invalid::named(
                "key_env",
                "give the key either as key_sha256 or as key_env, not both",
            )),
            (None, None) => Err(Invalid::named(
                "name",
                format!(
                    "client {:?} has no key: add key_sha256 = \"<hex SHA-256 of the key>\" or key_env = \"VAR\"",
                    self.name
                ),
            )),
        }
    }

    /// Whether it may run `pipeline`.
    pub fn may_run(&self, pipeline: &str) -> bool {
        self.pipelines
            .as_ref()
            .is_none_or(|p| p.iter().any(|p| p == pipeline))
    }

    /// Whether it may call `agent` through the reverse proxy.
    pub fn may_call(&self, agent: &str) -> bool {
        self.agents
            .as_ref()
            .is_none_or(|a| a.iter().any(|a| a == agent))
    }
}

impl Validate for ClientConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
        if self.name.is_empty() || !self.name.chars().all(ok) {
            out.push(Invalid::new(
                "name",
                format!("{:?}", self.name),
                "client names may only use ASCII letters, digits, `_`, `-` and `.`",
            ));
        } else if RESERVED_CLIENT_NAMES.contains(&self.name.as_str()) {
            out.push(Invalid::new(
                "name",
                format!("{:?}", self.name),
                "is reserved (unauthorized requests and the admin token use it)",
            ));
        }
        if let Some(var) = &self.key_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                let reason = "must be the name of an environment variable";
                out.push(Invalid::new("key_env", format!("{var:?}"), reason));
            }
        }
        out.extend(self.digest().err());
        if self.max_running_queries == Some(0) {
            let reason = "must be at least 1 (omit it for no limit)";
            out.push(Invalid::new("max_running_queries", 0, reason));
        }
        if self.rate == Some(0) {
            out.push(Invalid::new(
                "rate",
                0,
                "must be at least 1 (omit it for no limit)",
            ));
        }
        out
    }
}

/// Keys are secrets, and so are their digests (a short key falls to a dictionary):
/// neither is ever printed.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .field("key_sha256", &self.key_sha256.as_ref().map(|_| "***"))
            .field("key_env", &self.key_env)
            .field("pipelines", &self.pipelines)
            .field("agents", &self.agents)
            .field("max_running_queries", &self.max_running_queries)
            .field("rate", &self.rate)
            .finish()
    }
}

/// 64 hex digits, either case, to 32 bytes.
fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> ClientConfig {
        ClientConfig {
            name: name.to_owned(),
            key_sha256: Some(format!("{:x}", Sha256::digest(name.as_bytes()))),
            key_env: None,
            pipelines: None,
            agents: None,
            max_running_queries: None,
            rate: None,
        }
    }

    #[test]
    fn a_key_sha256_is_its_digest() {
        let a = client("team-a");
        assert_eq!(
            a.digest().unwrap(),
            <[u8; 32]>::from(Sha256::digest(b"team-a"))
        );
        let upper = ClientConfig {
            key_sha256: a.key_sha256.as_ref().map(|k| k.to_uppercase()),
            ..a.clone()
        };
        assert_eq!(upper.digest(), a.digest());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            let c = ClientConfig {
                key_sha256: Some(bad.to_owned()),
                ..a.clone()
            };
            assert_eq!(c.digest().unwrap_err().key, "key_sha256", "{bad:?}");
        }
    }

    #[test]
    fn problems_name_each_client_and_never_show_a_key() {
        let mut dup = client("team-a");
        dup.name = "team-b".into();
        let auth = AuthConfig {
            mode: AuthMode::ApiKey,
            clients: vec![
                client("team-a"),
                dup,
                ClientConfig {
                    rate: Some(0),
                    ..client("team-a")
                },
                ClientConfig {
                    key_sha256: None,
                    key_env: Some("AGENTGATE_TEST_UNSET_KEY".into()),
                    ..client("unknown")
                },
            ],
        };
        let problems: Vec<String> = auth.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "clients[1].key_sha256: gives the same key as an earlier client: keys must be unique",
                "clients[2].rate = 0: must be at least 1 (omit it for no limit)",
                "clients[2].name = \"team-a\": is used by an earlier client: names must be unique",
                "clients[2].key_sha256: gives the same key as an earlier client: keys must be unique",
                "clients[3].name = \"unknown\": is reserved (unauthorized requests and the admin token use it)",
                "clients[3].key_env: the environment variable `AGENTGATE_TEST_UNSET_KEY` is not set (or empty)",
            ]
        );
        let debug = format!("{:?}", client("team-a"));
        let hex = client("team-a").key_sha256.unwrap();
        assert!(!debug.contains(&hex), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[test]
    fn api_key_mode_needs_a_client() {
        let auth = AuthConfig {
            mode: AuthMode::ApiKey,
            clients: vec![],
        };
        assert_eq!(auth.problems()[0].key, "mode");
        assert!(AuthConfig::default().problems().is_empty());
    }

    #[test]
    fn allow_lists() {
        let c = ClientConfig {
            pipelines: Some(vec!["default".into()]),
            agents: Some(vec![]),
            ..client("a")
        };
        assert!(c.may_run("default") && !c.may_run("other"));
        assert!(!c.may_call("nlp"));
        assert!(client("a").may_run("x") && client("a").may_call("y"));
    }
}
