//! `ANY /agents/{agent}/{*path}`: a streaming reverse proxy through the agent's stack.
//!
//! Bodies stream both ways, frame by frame: nothing here buffers an answer, so an SSE
//! event reaches the client as soon as the agent writes it (SPEC §6). A request with
//! `Upgrade: websocket` is a handshake sent through the agent's stack like any request
//! (the breaker admits or refuses it and counts a failed one; it is never retried); when
//! the agent switches protocols (101), the client's and the agent's upgraded
//! connections are spliced until either side closes.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use agentgate_agent_client::AgentBody;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;

use crate::auth::Client;
use crate::error::{ApiError, Problem};
use crate::AppState;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP_COUNT: usize = 8;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Forwards the request to the agent and streams the answer back.
pub(crate) async fn proxy(State(state): State<AppState>, req: Request) -> Response {
    match forward(&state, req).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn forward(state: &AppState, req: Request) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    let (mut parts, body) = req.into_parts();
    // The agent's name and the path on the agent, straight from the request target (one
    // of `/agents/{agent}`, `/agents/{agent}/`, `/agents/{agent}/{*path}`).
    let uri = std::mem::take(&mut parts.uri);
    let target = AgentTarget::of(&uri);
    let agent_name = target.agent()?;
    let agent_name: &str = &agent_name;
    let runtime = state.runtime();
    let Some(agent) = runtime.agent(agent_name) else {
        return Err(ApiError::unknown_agent(agent_name));
    };
    // `authenticate` put the client there (and took its key out of the headers).
    match parts.extensions.get::<Client>() {
        Some(client) => client.may_call(agent_name)?,
        None => return Err(ApiError::new(Problem::Unauthorized, "no client")),
    }
    let path_and_query = target.path_and_query()?;
    let limit = runtime.config().server.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }

    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let original_host = parts.headers.remove(header::HOST);
    let original = parts.headers.clone();
    strip_hop_by_hop(&mut parts.headers);
    let tls = parts.extensions.get::<http::uri::Scheme>() == Some(&http::uri::Scheme::HTTPS);
    add_forwarded(&mut parts.headers, peer, original_host, tls);
    // A WebSocket handshake: the client's side of the upgrade, and the two headers
    // that ask for it (hop-by-hop, so stripped above).
    let upgrade = wants_websocket(&original)
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten();
    if upgrade.is_some() {
        ask_for_websocket(&mut parts.headers);
    }
    // What axum and the server put there is for this hop only (and the retry layer
    // copies the extensions of a request it may send again).
    parts.extensions = http::Extensions::new();

    // Streamed as the agent takes it: nothing is read before the breaker admits an
    // attempt, and the retry layer keeps up to `max_replay_body_bytes` for a retry.
    let body = AgentBody::stream(Limited::new(body, limit));
    let mut upstream = http::Request::from_parts(parts, body);
    *upstream.uri_mut() = http::Uri::from(path_and_query);
    *upstream.version_mut() = http::Version::HTTP_11;

    // Boxed: the stack's future is large, and this handler's future is moved by every
    // layer above it (axum boxes it, hyper's dispatcher holds it).
    let mut res = Box::pin(agent.send(upstream))
        .await
        .map_err(|e| ApiError::from_agent_error(agent_name, &e, limit))?;
    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, res.status()) {
        let agent_side = hyper::upgrade::on(&mut res);
        tokio::spawn(splice(client, agent_side, agent_name.to_owned()));
        let (mut parts, _) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        ask_for_websocket(&mut parts.headers);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// What the proxy makes of a request's target and headers before it sends anything:
/// the agent's name, the path and query to ask it for, and the headers stripped of
/// hop-by-hop ones with `x-forwarded-*` added. The fuzz targets drive it.
pub(crate) fn prepare(
    uri: &http::Uri,
    headers: &mut HeaderMap,
    peer: Option<IpAddr>,
) -> Result<(String, PathAndQuery), ApiError> {
    let target = AgentTarget::of(uri);
    let agent = target.agent()?.into_owned();
    let path_and_query = target.path_and_query()?;
    let host = headers.remove(header::HOST);
    strip_hop_by_hop(headers);
    add_forwarded(headers, peer, host, false);
    Ok((agent, path_and_query))
}

/// Whether the client asks to switch to WebSocket (`Connection: upgrade` and
/// `Upgrade: websocket`).
fn wants_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Puts back the two hop-by-hop headers of a WebSocket handshake (and of its 101).
fn ask_for_websocket(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Copies bytes both ways between the client's and the agent's upgraded connections
/// until either closes. The frames pass as they are: the agent and the client speak
/// WebSocket to each other, and this hop only carries the bytes.
async fn splice(client: OnUpgrade, agent: OnUpgrade, agent_name: String) {
    let (client, agent) = match tokio::try_join!(client, agent) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(agent = %agent_name, error = %e, "WebSocket upgrade through the proxy failed");
            return;
        }
    };
    let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
    match tokio::io::copy_bidirectional(&mut client, &mut agent).await {
        Ok((up, down)) => {
            tracing::debug!(agent = %agent_name, up, down, "WebSocket tunnel closed")
        }
        Err(e) => tracing::debug!(agent = %agent_name, error = %e, "WebSocket tunnel broke"),
    }
}

/// Where a proxied request goes: `/agents/{agent}{rest}[?query]`, split.
#[derive(Debug)]
struct AgentTarget<'a> {
    uri: &'a http::Uri,
    /// The agent segment as written (maybe percent-encoded).
    agent: &'a str,
    /// The path after it: empty, or starting with `/`.
    rest: &'a str,
}

impl<'a> AgentTarget<'a> {
    fn of(uri: &'a http::Uri) -> Self {
        let after = uri.path().strip_prefix("/agents/").unwrap_or("");
        let (agent, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
        Self { uri, agent, rest }
    }

    /// The agent's name, percent-decoded as a router would hand it out (borrowed when
    /// nothing was encoded).
    fn agent(&self) -> Result<Cow<'a, str>, ApiError> {
        percent_decode_str(self.agent)
            .decode_utf8()
            .map_err(|_| ApiError::bad_request("the agent name is not valid UTF-8"))
    }

    /// The path and query to ask the agent for: `rest` (`/` when empty) with the query.
    /// It may not step out of the agent: no `.`/`..` segments, no encoded `/` or `\\`.
    fn path_and_query(&self) -> Result<PathAndQuery, ApiError> {
        for segment in self.rest.split('/') {
            if is_dot_segment(segment)
                || contains_ci(segment, "%2f")
                || contains_ci(segment, "%5c")
                || segment.contains('\\')
            {
                return Err(ApiError::bad_request(format!(
                    "path segment `{segment}` is not allowed in proxied paths"
                )));
            }
        }
        let invalid = |_| ApiError::bad_request("the request path is not a valid URI path");
        match (self.rest.is_empty(), self.uri.query()) {
            (true, None) => Ok(PathAndQuery::from_static("/")),
            (true, Some(q)) => PathAndQuery::try_from(format!("/?{q}")).map_err(invalid),
            // `rest` and the query are the tail of the request target: reuse it as it is.
            (false, _) => {
                let path = self.uri.path();
                let pq = self.uri.path_and_query().map_or(path, PathAndQuery::as_str);
                let start = "/agents/".len() + self.agent.len();
                PathAndQuery::try_from(&pq[start..]).map_err(invalid)
            }
        }
    }
}

fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    (1..=2).contains(&dots)
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first, so that only what is there is removed: most
    // messages carry none of these, and each removal is a hash lookup.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn add_forwarded(
    headers: &mut HeaderMap,
    peer: Option<IpAddr>,
    host: Option<HeaderValue>,
    tls: bool,
) {
    if let Some(ip) = peer {
        let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
            Some(prior) => {
                let mut v = Vec::with_capacity(prior.len() + 2 + 39);
                v.extend_from_slice(prior);
                v.extend_from_slice(b", ");
                write_ip(&mut v, ip);
                HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
            }
            None => {
                let mut v = Vec::with_capacity(39);
                write_ip(&mut v, ip);
                HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
            }
        };
        if let Ok(v) = value {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// An address as `Display` writes it; IPv4 without going through the formatter.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Result<(String, String), ()> {
        let uri: http::Uri = uri.parse().unwrap();
        let t = AgentTarget::of(&uri);
        let agent = t.agent().map_err(|_| ())?.into_owned();
        let pq = t.path_and_query().map_err(|_| ())?;
        Ok((agent, pq.as_str().to_owned()))
    }

    #[test]
    fn paths_stay_inside_the_agent() {
        let ok = |uri: &str, agent: &str, path: &str| {
            assert_eq!(
                target(uri),
                Ok((agent.to_owned(), path.to_owned())),
                "{uri}"
            );
        };
        ok("/agents/nlp/process", "nlp", "/process");
        ok("/agents/nlp/a/b?x=1", "nlp", "/a/b?x=1");
        ok("/agents/nlp/", "nlp", "/");
        ok("/agents/nlp", "nlp", "/");
        ok("/agents/nlp?x=1&y", "nlp", "/?x=1&y");
        ok("/agents/nlp/?x=1", "nlp", "/?x=1");
        ok("/agents/nlp/v1.2/.../x", "nlp", "/v1.2/.../x");
        ok("/agents/n%6Cp/x%20y", "nlp", "/x%20y");
        ok("http://gw:8080/agents/nlp/a?b=%2F", "nlp", "/a?b=%2F");
        for bad in [
            "/agents/nlp/../admin",
            "/agents/nlp/.%2E/x",
            "/agents/nlp/%2e%2e/x",
            "/agents/nlp/a/%2E%2e",
            "/agents/nlp/a%2fb",
            "/agents/nlp/./x",
            "/agents/nlp/a%5Cb",
            "/agents/%FF/x",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Some("10.0.255.7".parse().unwrap()), None, false);
        assert_eq!(h["x-forwarded-for"], "10.0.255.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        add_forwarded(
            &mut h,
            Some("::1".parse().unwrap()),
            Some(HeaderValue::from_static("gw:8080")),
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.255.7, ::1");
        assert_eq!(h["x-forwarded-host"], "gw:8080");
        assert_eq!(h["x-forwarded-proto"], "https");
        for ip in ["0.0.0.0", "1.20.100.255", "192.168.1.9"] {
            let mut v = Vec::new();
            write_ip(&mut v, ip.parse().unwrap());
            assert_eq!(v, ip.as_bytes());
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
