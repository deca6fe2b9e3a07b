//! `ANY /agents/{agent}/{*path}`: a streaming reverse proxy through the agent's stack.

use std::net::SocketAddr;

use agentgate_retry::RetryBody;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;

use crate::error::ApiError;
use crate::AppState;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
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
pub(crate) async fn proxy(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let connect = req.extensions().get::<ConnectInfo<SocketAddr>>().cloned();
    let agent_name = params
        .iter()
        .find(|(k, _)| k == "agent")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    match forward(&state, &agent_name, connect.map(|c| c.0), req).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn forward(
    state: &AppState,
    agent_name: &str,
    peer: Option<SocketAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    let Some(agent) = state.agent(agent_name) else {
        return Err(ApiError::not_found(
            "unknown_agent",
            format!("no agent named `{agent_name}`"),
        ));
    };
    let (mut parts, body) = req.into_parts();
    let path_and_query = agent_path(parts.uri.path(), parts.uri.query())?;
    let limit = state.config().server.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    // An open breaker answers before the body is read or the upstream request built:
    // failing fast stays cheap when an agent is down and its callers keep coming.
    if let Some(e) = agent.try_reject() {
        return Err(ApiError::from_agent_error(agent_name, &e, limit));
    }

    let original_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    add_forwarded(&mut parts.headers, peer, original_host);

    // Small bodies are kept whole so idempotent requests can be retried; larger ones
    // stream through once.
    let replay_cap = agent.config().retry.max_replay_body_bytes;
    let body = RetryBody::buffer(Limited::new(body, limit), replay_cap)
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
    // Relative: `send` puts it on the agent's URL (without formatting it again when the
    // URL has no base path).
    let uri = http::Uri::try_from(path_and_query)
        .map_err(|_| ApiError::bad_request("the request path is not a valid URI path"))?;
    let mut upstream = http::Request::from_parts(parts, body);
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = http::Version::HTTP_11;

    let res = agent
        .send(upstream)
        .await
        .map_err(|e| ApiError::from_agent_error(agent_name, &e, limit))?;
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The path to request from the agent: what follows `/agents/{agent}` — refusing any
/// path that could climb out of the agent's base path (`.` / `..` segments, encoded
/// slashes or backslashes).
fn agent_path(full: &str, query: Option<&str>) -> Result<String, ApiError> {
    let after = full.strip_prefix("/agents/").unwrap_or("");
    let rest = after.find('/').map_or("/", |i| &after[i..]);
    // Checked without allocating: this runs on every proxied request.
    for segment in rest.split('/') {
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
    Ok(match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    })
}

/// `.` or `..`, with any of the dots percent-encoded (`%2e`, `%2E`).
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

/// Whether `hay` contains `needle`, ASCII case-insensitively.
fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn add_forwarded(headers: &mut HeaderMap, peer: Option<SocketAddr>, host: Option<HeaderValue>) {
    if let Some(peer) = peer {
        let ip = peer.ip().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        // Takes the string's buffer as it is (no copy).
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert("x-forwarded-for", v);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_agent() {
        assert_eq!(agent_path("/agents/nlp/process", None).unwrap(), "/process");
        assert_eq!(
            agent_path("/agents/nlp/a/b", Some("x=1")).unwrap(),
            "/a/b?x=1"
        );
        assert_eq!(agent_path("/agents/nlp/", None).unwrap(), "/");
        assert_eq!(
            agent_path("/agents/nlp/v1.2/.../x", None).unwrap(),
            "/v1.2/.../x"
        );
        assert!(agent_path("/agents/nlp/.%2E/x", None).is_err());
        for bad in [
            "/agents/nlp/../admin",
            "/agents/nlp/%2e%2e/x",
            "/agents/nlp/a/%2E%2e",
            "/agents/nlp/a%2fb",
            "/agents/nlp/./x",
            "/agents/nlp/a\\b",
        ] {
            assert!(agent_path(bad, None).is_err(), "{bad}");
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
