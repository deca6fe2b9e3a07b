//! The routers: public and admin (SPEC §3, §4).

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::error::{ApiError, Problem};
use crate::routes::{admin, dashboard, health, proxy, query};
use crate::{auth, ws, AppState};

/// The public listener's routes. Every one but `/healthz` and `/readyz` goes through
/// [`auth::authenticate`] (SPEC §7). When the config has no `admin_listen`, the admin
/// routes are served here too, and then reading them also needs the admin token.
pub fn public_app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/api/query", post(query::submit))
        .route("/api/query/{id}", get(query::get).delete(query::cancel))
        .route("/ws", get(ws::handler))
        .route("/agents/{agent}", any(proxy::proxy))
        .route("/agents/{agent}/", any(proxy::proxy))
        .route("/agents/{agent}/{*path}", any(proxy::proxy))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if state.runtime().config().server.admin_listen.is_none() {
        router = router.merge(
            admin_routes()
                .route("/metrics", get(admin::prometheus))
                .route("/dashboard", get(dashboard::dashboard))
                .route_layer(middleware::from_fn_with_state(state.clone(), require_token)),
        );
    }
    finish(router, state)
}

/// The admin listener's routes. With `[admin] protect_reads`, reading them (all but
/// `/metrics`, `/healthz` and `/readyz`) needs the admin token too.
pub fn admin_app(state: AppState) -> Router {
    let mut reads = admin_routes()
        .route("/ws", get(ws::admin_handler))
        .route("/dashboard", get(dashboard::dashboard));
    if state.runtime().config().admin.protect_reads {
        reads = reads.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    }
    let router = reads
        .route("/metrics", get(admin::prometheus))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    finish(router, state)
}

/// The JSON admin API. `/metrics` is not among them: on the admin listener Prometheus
/// scrapes it without a token even with `protect_reads`.
fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/api/orchestration/metrics", get(admin::metrics_json))
        .route("/api/orchestration/health", get(admin::health_json))
        .route("/api/orchestration/circuit-breakers", get(admin::breakers))
        .route(
            "/api/orchestration/circuit-breakers/reset",
            post(admin::reset_all),
        )
        .route(
            "/api/orchestration/circuit-breakers/{agent}/{action}",
            post(admin::act),
        )
        .route("/api/orchestration/reload", post(admin::reload))
}

fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(SequentialRequestId::new()))
}

/// The admin token as `Authorization: Bearer`, or as `?token=` on `GET`s (the
/// dashboard page and its WebSocket: browsers cannot set headers on either).
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut authorized = admin::authorize(&state, req.headers());
    if authorized.is_err() && req.method() == http::Method::GET {
        if let Some(token) = auth::query_param(req.uri().query().unwrap_or(""), "token") {
            let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"));
            if let Ok(bearer) = bearer {
                let headers = http::HeaderMap::from_iter([(http::header::AUTHORIZATION, bearer)]);
                authorized = admin::authorize(&state, &headers);
            }
        }
    }
    match authorized {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::new(Problem::NotFound, "no such route").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        Problem::MethodNotAllowed,
        "method not allowed on this route",
    )
    .into_response()
}

/// Request ids unique per process run: a random prefix drawn once at startup and a
/// counter. A UUID v4 per request would cost a `getrandom` system call on every request.
#[derive(Clone, Debug)]
struct SequentialRequestId {
    prefix: std::sync::Arc<str>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> Self {
        Self {
            prefix: uuid::Uuid::new_v4().simple().to_string()[..12].into(),
            next: std::sync::Arc::default(),
        }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `{prefix}-{n:x}`, written straight into the header's bytes: one allocation.
        let mut id = Vec::with_capacity(self.prefix.len() + 1 + 16);
        id.extend_from_slice(self.prefix.as_bytes());
        id.push(b'-');
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            id.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
        }
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_a_hex_counter() {
        let mut ids = SequentialRequestId::new();
        let prefix = ids.prefix.to_string();
        let req = http::Request::new(());
        let next = |ids: &mut SequentialRequestId| {
            ids.make_request_id(&req)
                .unwrap()
                .header_value()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(next(&mut ids), format!("{prefix}-0"));
        assert_eq!(next(&mut ids), format!("{prefix}-1"));
        for n in [15u64, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            ids.next.store(n, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(next(&mut ids), format!("{prefix}-{n:x}"));
        }
    }
}
