//! Notifications (SPEC §9): breaker and health transitions POSTed as JSON to the
//! `[[notify]]` webhooks, so that a trip reaches someone without Prometheus and
//! Alertmanager.
//!
//! ```json
//! {"event": "breaker_opened", "agent": "nlp", "from": "closed", "to": "open",
//!  "reason": "consecutive", "ts": "2026-11-25T12:00:00.250Z", "replica": "gw-1-5f3c9a2b7d10"}
//! {"event": "health_changed", "from": "healthy", "to": "degraded",
//!  "health": {"score": 80, "status": "degraded", "reasons": ["circuit breaker of `nlp` is open"]},
//!  "ts": "…", "replica": "…"}
//! ```
//!
//! - **Sources**: one task ([`Sources::run`]) follows every breaker's transitions (a breaker that
//!   opens or is forced open: `breaker_opened`; one that closes: `breaker_closed`) and
//!   looks at the health status every second (`health_changed`, from the second look).
//! - **Never in the way**: each hook has a bounded queue (`queue`); a notification is
//!   put there without waiting, or dropped when it is full. Queries and breakers never
//!   wait for a hook.
//! - **`min_interval`**: at most one notification per (event, agent) per hook in that
//!   interval (the health has no agent); the others are skipped before they are
//!   queued.
//! - **Delivery**: one task per hook sends its queue in order, each notification through
//!   agentgate's own stack for the hook (`agentgate-agent-client`: retry with backoff,
//!   the hook's own circuit breaker, a per-attempt timeout), with an `idempotency-key`
//!   (so the retry layer may retry the POST, and the hook can drop a duplicate) and the
//!   configured `headers`. Any 2xx is delivered.
//! - `agentgate_notifications_total{outcome}`: `sent`, `failed` (after the retries, or
//!   refused by the hook's breaker), `dropped` (queue full).
//!
//! The hooks belong to the [`Runtime`](crate::runtime::Runtime): a reload keeps a hook
//! whose keys are unchanged (its queue, its breaker, its intervals) and lets the queue
//! of a removed one drain.

mod config;
mod interval;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentgate_agent_client::{AgentBody, AgentClient};
use agentgate_circuit_breaker::{State as BreakerState, Transition};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

pub use config::{NotifyConfig, NotifyEvent};
use interval::MinInterval;

use crate::routes::admin;
use crate::server::GatewayError;
use crate::AppState;

/// How often the health status is looked at.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The hooks of one configuration. Cheap to share: each hook is behind an `Arc`.
#[derive(Debug, Default)]
pub struct Notifier {
    hooks: Vec<Arc<Hook>>,
}

/// One hook: its config, its queue and what it admits.
#[derive(Debug)]
struct Hook {
    config: NotifyConfig,
    tx: mpsc::Sender<Notification>,
    gate: Mutex<MinInterval<(NotifyEvent, Option<String>)>>,
}

/// One thing to tell a hook: the JSON body of its POST.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// `breaker_opened`, `breaker_closed` or `health_changed`.
    pub event: &'static str,
    /// The agent, for breaker events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The state (breaker) or status (health) before.
    pub from: &'static str,
    /// After.
    pub to: &'static str,
    /// Why the breaker changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The health object (`{"score","status","reasons"}`), for `health_changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Value>,
    /// When it happened (RFC 3339, UTC, milliseconds).
    pub ts: String,
    /// Which replica tells it.
    pub replica: String,
}

/// Describes the notification counter, whose series exist (at 0) from the start, so
/// that `increase()` and alerts see the first of each.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "agentgate_notifications_total",
        "Notifications to [[notify]] webhooks, by outcome (sent, failed, dropped)"
    );
    for outcome in ["sent", "failed", "dropped"] {
        count(outcome, 0);
    }
}

// === impl Notifier ===

impl Notifier {
    /// The hooks of `configs`, each with its delivery task; a hook of `previous` whose
    /// config is the same is kept as it is. Must be called within a tokio runtime when
    /// there are hooks.
    pub(crate) fn build(
        configs: &[NotifyConfig],
        previous: Option<&Notifier>,
    ) -> Result<Self, GatewayError> {
        let mut hooks = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let kept = previous
                .into_iter()
                .flat_map(|p| &p.hooks)
                .find(|h| h.config == *config);
            let hook = match kept {
                Some(hook) => hook.clone(),
                None => Arc::new(Hook::start(i, config)?),
            };
            hooks.push(hook);
        }
        Ok(Self { hooks })
    }

    /// Whether some hook wants `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.hooks.iter().any(|h| h.config.events.contains(&event))
    }

    /// Queues `n` for every hook that wants it and has not had one for the same event
    /// and agent within its `min_interval`. Never waits.
    pub fn notify(&self, event: NotifyEvent, n: &Notification) {
        let now = Instant::now();
        for hook in self
            .hooks
            .iter()
            .filter(|h| h.config.events.contains(&event))
        {
            let admitted = {
                let mut gate = hook.gate.lock().unwrap_or_else(|e| e.into_inner());
                gate.admit((event, n.agent.clone()), now)
            };
            if admitted && hook.tx.try_send(n.clone()).is_err() {
                count("dropped", 1);
            }
        }
    }
}

// === impl Hook ===

impl Hook {
    /// The `i`-th hook: its client (`notify:{i}` in the agent metrics) and its delivery
    /// task, which ends once the hook is dropped and its queue is empty.
    fn start(i: usize, config: &NotifyConfig) -> Result<Self, GatewayError> {
        let name = format!("notify:{i}");
        let client = AgentClient::new(&name, config.client_config()).map_err(|source| {
            GatewayError::Agent {
                agent: name,
                source,
            }
        })?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(deliver(client, rx));
        Ok(Self {
            gate: Mutex::new(MinInterval::new(config.min_interval)),
            config: config.clone(),
            tx,
        })
    }
}

/// Sends a hook's notifications in order, one at a time, until its queue closes. The
/// client adds the hook's `headers`.
async fn deliver(client: AgentClient, mut rx: mpsc::Receiver<Notification>) {
    let url = client.config().url.clone();
    while let Some(n) = rx.recv().await {
        let body = match serde_json::to_vec(&n) {
            Ok(body) => body,
            Err(_) => continue,
        };
        let req = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .body(AgentBody::from(bytes::Bytes::from(body)))
            .expect("a valid request");
        let outcome = match client.send(req).await {
            Ok(res) if res.status().is_success() => "sent",
            Ok(res) => {
                tracing::warn!(hook = %url, status = %res.status(), event = n.event, "notification not delivered");
                "failed"
            }
            Err(e) => {
                tracing::warn!(hook = %url, error = %e, event = n.event, "notification not delivered");
                "failed"
            }
        };
        count(outcome, 1);
    }
}

fn count(outcome: &'static str, n: u64) {
    metrics::counter!("agentgate_notifications_total", "outcome" => outcome).increment(n);
}

// === the sources ===

/// What notifications are made of: every breaker's transitions and the health status,
/// followed from the moment this is made.
#[derive(Debug)]
pub struct Sources {
    transitions: broadcast::Receiver<Transition>,
    health: Option<&'static str>,
}

impl Sources {
    /// Follows `state`'s breakers from now on (make it before the transition log
    /// starts, so none is missed), with the health status as it is now.
    pub fn new(state: &AppState) -> Self {
        Self {
            transitions: state.transitions().follow().1,
            health: Some(admin::health(state).1),
        }
    }

    /// Hands what the hooks want to the running configuration's notifier, until
    /// aborted: each breaker transition, and each change of the health status, looked at
    /// every second.
    pub async fn run(mut self, state: AppState) {
        let replica: Arc<str> = match state.engine().backend().replica() {
            Some(replica) => replica.into(),
            None => agentgate_progress_redis::host_name().into(),
        };
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                t = self.transitions.recv() => match t {
                    Ok(t) => breaker(&state, &t, &replica),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "notifications missed breaker transitions");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => health_changed(&state, &mut self.health, &replica),
            }
        }
    }
}

/// A breaker transition: `breaker_opened` or `breaker_closed`, or nothing.
fn breaker(state: &AppState, t: &Transition, replica: &Arc<str>) {
    let event = match t.to {
        BreakerState::Open | BreakerState::ForcedOpen => NotifyEvent::BreakerOpened,
        BreakerState::Closed => NotifyEvent::BreakerClosed,
        BreakerState::HalfOpen | BreakerState::Disabled => return,
    };
    let runtime = state.runtime();
    if !runtime.notifier().wants(event) {
        return;
    }
    let n = Notification {
        event: event.as_str(),
        agent: Some(t.agent.to_string()),
        from: t.from.as_str(),
        to: t.to.as_str(),
        reason: Some(t.reason.as_str()),
        health: None,
        ts: rfc3339(t.wall),
        replica: replica.to_string(),
    };
    runtime.notifier().notify(event, &n);
}

/// A look at the health status: `health_changed` when it differs from the last look.
fn health_changed(state: &AppState, last: &mut Option<&'static str>, replica: &Arc<str>) {
    let runtime = state.runtime();
    let (score, status, reasons) = admin::health(state);
    if !runtime.notifier().wants(NotifyEvent::HealthChanged) {
        *last = Some(status);
        return;
    }
    let before = last.replace(status);
    let Some(from) = before.filter(|from| *from != status) else {
        return;
    };
    let n = Notification {
        event: NotifyEvent::HealthChanged.as_str(),
        agent: None,
        from,
        to: status,
        reason: None,
        health: Some(serde_json::json!({"score": score, "status": status, "reasons": reasons})),
        ts: rfc3339(SystemTime::now()),
        replica: replica.to_string(),
    };
    runtime.notifier().notify(NotifyEvent::HealthChanged, &n);
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
