//! Who is asking (SPEC §7): API keys on the public listener, the admin token on admin
//! reads.
//!
//! [`authenticate`] runs in front of every public route but `/healthz` and `/readyz`.
//! It finds the key (`Authorization: Bearer`, `x-api-key`, or `?api_key=` on a
//! WebSocket upgrade, where browsers cannot set headers), looks it up, and either
//! answers 401 or passes the request on with its [`Client`] as a request extension,
//! which routes and the WebSocket read for ownership, allow-lists and quotas.
//!
//! Keys are kept only as SHA-256 digests. A lookup hashes the key given once, finds
//! the clients whose digest starts with the same 8 bytes (a map, so the cost does not
//! grow with the number of clients) and compares the whole digest with theirs, and
//! with the admin token's, in constant time. What the time taken can tell is only
//! whether some key's digest shares the first 8 bytes of the digest of the guess,
//! which says nothing about any key (finding one from its digest is a SHA-256
//! preimage). The credential is removed from the request before anything else sees
//! it, so a proxied request never carries a client's key to an agent, and nothing
//! logs it.

use std::collections::HashMap;
use std::sync::Arc;

use agentgate_config::Invalid;
use agentgate_pipeline::Caller;
use agentgate_progress::Quota;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, AuthMode, ClientConfig};
use crate::error::{ApiError, Problem};
use crate::AppState;

/// `x-api-key`.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// `agentgate_client_rejected_total{client,reason}`.
pub const CLIENT_REJECTED: &str = "agentgate_client_rejected_total";

/// The principal of a request on the public listener, or of a WebSocket connection.
#[derive(Clone, Debug)]
pub enum Client {
    /// `auth.mode = "none"`: anyone may do anything, and queries belong to no one.
    Anyone,
    /// The admin token: every query is visible; no allow-list or quota applies.
    Admin,
    /// A configured client.
    Known(Arc<KnownClient>),
}

/// A configured client, as requests see it.
#[derive(Debug)]
pub struct KnownClient {
    config: ClientConfig,
    quota: Quota,
}

/// The keys of a gateway: every client's digest, and the admin token's.
#[derive(Debug)]
pub struct Clients {
    mode: AuthMode,
    /// By the first 8 bytes of their key's digest (almost always one per entry).
    known: HashMap<[u8; 8], Vec<Keyed>>,
    admin: Option<[u8; 32]>,
}

/// A client and the digest of its key.
type Keyed = ([u8; 32], Arc<KnownClient>);

/// Why a request may not go on, before it reaches a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or an unknown one (401).
    Unauthorized,
    /// A pipeline or agent outside the client's lists (403).
    Forbidden,
    /// Over the client's `max_running_queries` (429).
    TooManyQueries,
    /// Over the client's `rate` (429 + `Retry-After`).
    RateLimited,
}

// === impl Client ===

impl Client {
    /// The `client` of the queries it starts: a configured name, `admin`, or none.
    pub fn owner(&self) -> Option<String> {
        match self {
            Client::Anyone => None,
            Client::Admin => Some("admin".to_owned()),
            Client::Known(c) => Some(c.config.name.clone()),
        }
    }

    /// Whose queries it may see.
    pub fn caller(&self) -> Caller<'_> {
        match self {
            Client::Anyone | Client::Admin => Caller::Anyone,
            Client::Known(c) => Caller::Client(&c.config.name),
        }
    }

    /// The `client` label of its metrics (`None` without `[auth]`: no per-client series).
    pub fn label(&self) -> Option<&str> {
        match self {
            Client::Anyone => None,
            Client::Admin => Some("admin"),
            Client::Known(c) => Some(&c.config.name),
        }
    }

    /// Its quota (none for `Anyone` and `Admin`).
    pub fn quota(&self) -> Quota {
        match self {
            Client::Known(c) => c.quota,
            _ => Quota::default(),
        }
    }

    /// 403 unless it may run `pipeline`.
    pub fn may_run(&self, pipeline: &str) -> Result<(), ApiError> {
        self.allowed(
            |c| c.may_run(pipeline),
            || format!("run pipeline `{pipeline}`"),
        )
    }

    /// 403 unless it may call `agent` through the reverse proxy.
    pub fn may_call(&self, agent: &str) -> Result<(), ApiError> {
        self.allowed(|c| c.may_call(agent), || format!("use agent `{agent}`"))
    }

    /// 403 (counted) when a known client's lists do not allow `what`.
    fn allowed(
        &self,
        allows: impl FnOnce(&ClientConfig) -> bool,
        what: impl FnOnce() -> String,
    ) -> Result<(), ApiError> {
        match self {
            Client::Known(c) if !allows(&c.config) => {
                self.rejected(Refusal::Forbidden);
                let message = format!("client `{}` may not {}", c.config.name, what());
                Err(ApiError::new(Problem::Forbidden, message))
            }
            _ => Ok(()),
        }
    }

    /// Counts a refusal of this client's request.
    pub fn rejected(&self, reason: Refusal) {
        if let Some(client) = self.label() {
            rejected(client, reason);
        }
    }
}

// === impl Clients ===

impl Clients {
    /// The keys of `auth`, and the admin token's. Fails when a client's key cannot be
    /// read (an environment variable unset since the config was checked).
    pub fn new(auth: &AuthConfig, admin_token: Option<&str>) -> Result<Self, Invalid> {
        let mut known: HashMap<[u8; 8], Vec<Keyed>> = HashMap::with_capacity(auth.clients.len());
        for (i, config) in auth.clients.iter().enumerate() {
            let digest = config
                .digest()
                .map_err(|e| e.within(&format!("auth.clients[{i}]")))?;
            let quota = Quota {
                max_running: config.max_running_queries,
                rate: config.rate,
            };
            let client = KnownClient {
                config: config.clone(),
                quota,
            };
            known
                .entry(prefix(&digest))
                .or_default()
                .push((digest, Arc::new(client)));
        }
        Ok(Self {
            mode: auth.mode,
            known,
            admin: admin_token.map(|t| Sha256::digest(t.as_bytes()).into()),
        })
    }

    /// Whether keys are required on the public listener.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::ApiKey
    }

    /// The client whose key this is, or the admin, or `None` (see the module docs for
    /// what is compared in constant time).
    pub fn identify(&self, key: &[u8]) -> Option<Client> {
        self.identify_digest(&Sha256::digest(key).into())
    }

    fn identify_digest(&self, digest: &[u8; 32]) -> Option<Client> {
        let mut found = None;
        for (known, client) in self.known.get(&prefix(digest)).into_iter().flatten() {
            if bool::from(known.ct_eq(digest)) {
                found = Some(Client::Known(client.clone()));
            }
        }
        let admin = self
            .admin
            .is_some_and(|admin| bool::from(admin.ct_eq(digest)));
        found.or(admin.then_some(Client::Admin))
    }
}

// === impl Refusal ===

impl Refusal {
    /// The `reason` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::TooManyQueries => "too_many_queries",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// Counts a refused request of `client` (`unknown` for unauthorized ones).
pub fn rejected(client: &str, reason: Refusal) {
    metrics::counter!(CLIENT_REJECTED, "client" => client.to_owned(), "reason" => reason.as_str())
        .increment(1);
}

/// Registers the help text of the client metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        CLIENT_REJECTED,
        "Requests refused before they started anything, by client and reason (unauthorized, forbidden, too_many_queries, rate_limited)"
    );
}

/// The public listener's middleware: sets the request's [`Client`], or answers 401.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let runtime = state.runtime();
    let clients = runtime.clients();
    if !clients.required() {
        req.extensions_mut().insert(Client::Anyone);
        return next.run(req).await;
    }
    let upgrade = is_websocket_upgrade(req.headers());
    let client = take_key(&mut req, upgrade).and_then(|digest| clients.identify_digest(&digest));
    match client {
        Some(client) => {
            req.extensions_mut().insert(client);
            next.run(req).await
        }
        None => {
            rejected("unknown", Refusal::Unauthorized);
            ApiError::new(
                Problem::Unauthorized,
                "a valid API key is required: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
            .into_response()
        }
    }
}

/// Takes the credential out of the request: the digest of the key, if one was sent
/// (hashed where it lies, without a copy).
fn take_key(req: &mut Request, upgrade: bool) -> Option<[u8; 32]> {
    let digest = |key: &[u8]| -> [u8; 32] { Sha256::digest(key).into() };
    let headers = req.headers_mut();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let (scheme, key) = v.split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| digest(key.trim_ascii()))
    });
    // Both go, whichever is used: neither is for the agent.
    let api_key = headers.remove(X_API_KEY);
    if bearer.is_some() {
        headers.remove(header::AUTHORIZATION);
        return bearer;
    }
    if let Some(key) = api_key {
        return Some(digest(key.as_bytes()));
    }
    if upgrade {
        let key = query_param(req.uri().query().unwrap_or(""), "api_key")?;
        return Some(digest(key.as_bytes()));
    }
    None
}

/// The first 8 bytes of a digest: the key of the client map.
fn prefix(digest: &[u8; 32]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// `name`'s value in a query string, percent-decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[(&str, &str)]) -> AuthConfig {
        let clients = keys
            .iter()
            .map(|(name, key)| ClientConfig {
                name: (*name).to_owned(),
                key_sha256: Some(format!("{:x}", Sha256::digest(key.as_bytes()))),
                key_env: None,
                pipelines: None,
                agents: None,
                max_running_queries: Some(3),
                rate: None,
            })
            .collect();
        AuthConfig {
            mode: AuthMode::ApiKey,
            clients,
        }
    }

    #[test]
    fn keys_identify_their_client_and_nothing_else() {
        let clients = Clients::new(&auth(&[("a", "key-a"), ("b", "key-b")]), Some("root")).unwrap();
        let name = |key: &str| match clients.identify(key.as_bytes()) {
            Some(Client::Known(c)) => c.config.name.clone(),
            Some(Client::Admin) => "ADMIN".to_owned(),
            Some(Client::Anyone) => unreachable!(),
            None => "-".to_owned(),
        };
        assert_eq!(name("key-a"), "a");
        assert_eq!(name("key-b"), "b");
        assert_eq!(name("root"), "ADMIN");
        for wrong in ["", "key-", "key-a ", "KEY-A", "key-c"] {
            assert_eq!(name(wrong), "-", "{wrong:?}");
        }
        let a = clients.identify(b"key-a").unwrap();
        assert_eq!(a.owner().as_deref(), Some("a"));
        assert_eq!(a.caller(), Caller::Client("a"));
        assert_eq!(a.quota().max_running, Some(3));
        assert_eq!(Client::Admin.caller(), Caller::Anyone);
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("a=1&api_key=k%2By+z", "api_key").as_deref(),
            Some("k+y z")
        );
        assert_eq!(query_param("api_key", "api_key").as_deref(), Some(""));
        assert_eq!(query_param("x=1", "api_key"), None);
    }
}
