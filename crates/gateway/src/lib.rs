//! The agentgate gateway: configuration, routes and serving.
//!
//! - [`config`]: the TOML config of SPEC §2, with `file:line:col` errors.
//! - [`app`]: the public router (queries, WebSocket, reverse proxy, health) and the admin
//!   router (Prometheus, JSON metrics, health, circuit breakers, WebSocket).
//! - [`admission`]: the connection cap and the request body stall timeout (SPEC §8).
//! - [`auth`]: API keys (SPEC §7): the [`auth::Client`] of each public request.
//! - [`error`]: the one place errors become HTTP answers.
//! - [`fuzz`]: what the cargo-fuzz targets (`fuzz/`) check, runnable on stable.
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

pub mod admission;
pub mod app;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod fuzz;
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
