//! The running configuration: what a reload (SPEC §9) swaps as one unit for new
//! requests, while requests and queries in flight keep the one they started with.
//!
//! Handlers read it through [`AppState::runtime`](crate::AppState::runtime), once per
//! request: the config, the agents' clients and the admin token then all come from the
//! same reload. What a reload cannot change (the listeners, `[progress]`, limits fixed
//! at startup) keeps its running value in the new runtime: see [`crate::reload`].

use std::collections::BTreeMap;
use std::sync::Arc;

use agentgate_agent_client::AgentClient;

use crate::auth::Clients;
use crate::config::Config;
use crate::notify::Notifier;
use crate::server::GatewayError;

/// One configuration and what is built from it. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Runtime {
    config: Config,
    agents: Arc<BTreeMap<String, AgentClient>>,
    access: Access,
    notifier: Notifier,
}

/// Who may call: the admin token and the clients' keys and quotas (SPEC §7), read from
/// the environment (`token_env`, `key_env`) when the config is (re)loaded.
#[derive(Debug)]
pub(crate) struct Access {
    admin_token: Option<String>,
    clients: Clients,
}

/// How each agent of a new runtime relates to the previous one's.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentChanges {
    /// New agents.
    pub added: Vec<String>,
    /// Agents gone (running queries that use them finish first).
    pub removed: Vec<String>,
    /// Agents that keep their circuit breaker (url and breaker keys unchanged).
    pub kept: Vec<String>,
    /// Agents with a new circuit breaker (url or a breaker key changed).
    pub rebuilt: Vec<String>,
}

// === impl Runtime ===

impl Runtime {
    /// The runtime of `config`, whose agents' clients are `agents` (the map the engine
    /// hands out), whose callers are `access` ([`Access::read`] of `config`) and whose
    /// hooks are `notifier`.
    pub(crate) fn new(
        config: Config,
        agents: Arc<BTreeMap<String, AgentClient>>,
        access: Access,
        notifier: Notifier,
    ) -> Self {
        Self {
            config,
            agents,
            access,
            notifier,
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The agents' clients, by name.
    pub fn agents(&self) -> &BTreeMap<String, AgentClient> {
        &self.agents
    }

    /// The agent called `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentClient> {
        self.agents.get(name)
    }

    /// The admin bearer token, if configured.
    pub fn admin_token(&self) -> Option<&str> {
        self.access.admin_token.as_deref()
    }

    /// The clients (`[auth]`): who may call, and their quotas.
    pub fn clients(&self) -> &Clients {
        &self.access.clients
    }

    /// The `[[notify]]` hooks.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }
}

// === impl Access ===

impl Access {
    /// The admin token and the clients of `config`, read from the environment now:
    /// fails when a client's key cannot be (`key_env` unset since the config was
    /// checked).
    pub(crate) fn read(config: &Config) -> Result<Self, GatewayError> {
        let admin_token = config.admin.token();
        let clients = Clients::new(&config.auth, admin_token.as_deref())?;
        Ok(Self {
            admin_token,
            clients,
        })
    }
}

/// The clients of `config`'s agents: new ones, or when `previous` has the agent, that
/// client [reconfigured](AgentClient::reconfigured) (keeping its breaker and pool
/// where the config allows).
pub(crate) fn build_agents(
    config: &Config,
    previous: Option<&BTreeMap<String, AgentClient>>,
) -> Result<(BTreeMap<String, AgentClient>, AgentChanges), GatewayError> {
    let mut agents = BTreeMap::new();
    let mut changes = AgentChanges::default();
    for (name, agent) in &config.agents {
        let old = previous.and_then(|p| p.get(name));
        let built = match old {
            Some(old) => old.reconfigured(agent.clone()),
            None => AgentClient::new(name, agent.clone()),
        };
        let client = built.map_err(|source| GatewayError::Agent {
            agent: name.clone(),
            source,
        })?;
        let list = match old {
            None => &mut changes.added,
            Some(old) if old.shares_breaker(&client) => &mut changes.kept,
            Some(_) => &mut changes.rebuilt,
        };
        list.push(name.clone());
        agents.insert(name.clone(), client);
    }
    if let Some(previous) = previous {
        let gone = previous.keys().filter(|name| !agents.contains_key(*name));
        changes.removed = gone.cloned().collect();
    }
    Ok((agents, changes))
}
