//! The agentgate gateway: configuration, routes and serving.
//!
//! - [`config`]: the TOML config of SPEC §2, with `file:line:col` errors.
//! - [`app`]: the public router (queries, WebSocket, reverse proxy, health) and the admin
//!   router (Prometheus, JSON metrics, health, circuit breakers, WebSocket).
//! - [`error`]: the one place errors become HTTP answers.
//! - [`ws`]: `GET /ws` — queries, live progress, replay and metrics over a WebSocket.
//! - [`server`]: [`run`]`(listener, admin_listener, config, shutdown)` — what the binary
//!   calls and what tests start in-process on `127.0.0.1:0`.
//! - [`runtime`], [`reload`]: the running configuration, read once per request through
//!   [`AppState::runtime`], and swapped whole by a reload (SIGHUP,
//!   `POST /api/orchestration/reload`) while requests in flight keep theirs.
//! - [`transitions`]: every breaker's transitions in one feed (the log, WebSocket
//!   metrics subscribers, notifications), the breakers a reload builds included, and the
//!   recent ones of every agent, kept so that a dashboard opened after a trip still shows
//!   it.
//! - [`notify`]: `[[notify]]` webhooks told of breaker and health transitions.
//! - [`demo`]: `agentgate demo`: its mock agents, its embedded config, what it prints.

pub mod app;
pub mod config;
pub mod demo;
pub mod error;
pub mod notify;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod server;
mod state;
pub mod transitions;
pub mod ws;

pub use config::{Config, ConfigError};
pub use server::{build_state, prometheus, run, serve, GatewayError};
pub use state::AppState;
