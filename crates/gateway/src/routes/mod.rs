//! Route handlers, one file per area.

pub(crate) mod admin;
pub(crate) mod dashboard;
pub(crate) mod health;
pub(crate) mod proxy;
pub(crate) mod query;

pub use admin::{breaker_json, health, metrics_value};
