use std::fmt;
use std::sync::Arc;

use agentgate_classify::HttpClassifier;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tower_layer::Layer;

use crate::breaker::Breaker;
use crate::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, ConfigError};

/// Wraps services in one circuit breaker.
///
/// One layer is one breaker: every service it wraps, and every clone of those, shares
/// the breaker's state. Build one layer per agent.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = HttpClassifier> {
    breaker: Arc<Breaker>,
    classifier: C,
}

/// Builds a [`CircuitBreakerLayer`] with options beyond the config file's keys.
#[derive(Clone, Debug)]
pub struct CircuitBreakerBuilder {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    jitter: f64,
    seed: Option<u64>,
}

// === impl CircuitBreakerLayer ===

impl CircuitBreakerLayer {
    /// A breaker named `name` (the agent, used as the `agent` metric label) with the
    /// default HTTP classifier. Fails if `config` does not validate.
    pub fn try_new(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
    ) -> Result<Self, ConfigError> {
        Self::builder(name).config(config).build()
    }

    /// A builder, for open-period jitter and a seeded RNG.
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            name: name.into(),
            config: CircuitBreakerConfig::default(),
            jitter: 0.1,
            seed: None,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses `classifier` to decide which results are failures (for example
    /// `agentgate_classify::ErrorClassifier` for services whose responses are not HTTP).
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// A handle to read and steer this breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.core().clone())
    }

    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    pub(crate) fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self)
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("agent", self.breaker.core().name())
            .field("config", self.breaker.core().config())
            .finish()
    }
}

// === impl CircuitBreakerBuilder ===

impl CircuitBreakerBuilder {
    /// The `circuit_breaker` keys (default: SPEC defaults).
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// The share (0..=1, default 0.1) by which an open period after a failed probe round
    /// may be shortened at random, so replicas that tripped together do not probe
    /// together. The first open period after a trip from closed is never jittered.
    pub fn open_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter's RNG (for reproducible tests).
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer, ConfigError> {
        self.config.validate()?;
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return Err(ConfigError::new(
                "open_jitter",
                self.jitter,
                "must be between 0 and 1",
            ));
        }
        let rng = match self.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Ok(CircuitBreakerLayer {
            breaker: Arc::new(Breaker::new(self.name, self.config, self.jitter, rng)),
            classifier: HttpClassifier::default(),
        })
    }
}
