//! The `[pipelines.P]` keys of SPEC §2.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One pipeline: stages run in order under one deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The whole query, retries and backoff included.
    #[serde(with = "humantime_serde", default = "default_deadline")]
    pub deadline: Duration,
    /// Retries across all stages of one query.
    #[serde(default = "default_retry_allowance")]
    pub retry_allowance: u32,
    /// The stages, in order.
    pub stages: Vec<StageConfig>,
}

/// One stage: POST the query to `agent.url + path`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique within the pipeline; the key of the stage's output in `result`.
    pub name: String,
    /// The agent (a key of `[agents]`).
    pub agent: String,
    /// Path on the agent, starting with `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Share of the progress bar (relative to the other stages).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// On failure the stage is `skipped` and the query goes on.
    #[serde(default)]
    pub optional: bool,
    /// Tried in order when the stage fails after its retries or its breaker is open.
    #[serde(default)]
    pub fallback: Vec<Fallback>,
}

/// A fallback: another agent (same path and body), or a static output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fallback {
    /// `{ agent = "nlp_backup" }`.
    Agent(String),
    /// `{ static = { intent = "unknown" } }`.
    Static(serde_json::Value),
}

/// A pipeline setting that cannot work. `key` is relative to the pipeline's table
/// (`stages[1].agent`); the config loader prefixes `pipelines.NAME.`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct PipelineConfigError {
    /// The key, as spelt in the config file.
    pub key: String,
    /// The offending value, as the user wrote it.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

// === impl PipelineConfig ===

impl PipelineConfig {
    /// Checks every key; `is_agent` says whether an agent name is a key of `[agents]`.
    /// The error names the first bad key and its value.
    pub fn validate(&self, is_agent: impl Fn(&str) -> bool) -> Result<(), PipelineConfigError> {
        let err = |key: String, value: String, reason| PipelineConfigError { key, value, reason };
        if self.deadline.is_zero() {
            return Err(err(
                "deadline".into(),
                "0s".into(),
                "must be greater than 0",
            ));
        }
        if self.stages.is_empty() {
            return Err(err(
                "stages".into(),
                "[]".into(),
                "a pipeline needs at least one stage",
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let key = |field: &str| format!("stages[{i}].{field}");
            if stage.name.is_empty() {
                return Err(err(key("name"), "\"\"".into(), "must not be empty"));
            }
            if self.stages[..i].iter().any(|s| s.name == stage.name) {
                return Err(err(
                    key("name"),
                    format!("{:?}", stage.name),
                    "is already the name of an earlier stage",
                ));
            }
            if !is_agent(&stage.agent) {
                return Err(err(
                    key("agent"),
                    format!("{:?}", stage.agent),
                    "no such agent (not a key of [agents])",
                ));
            }
            let path_ok = stage.path.starts_with('/')
                && stage.path.parse::<http::uri::PathAndQuery>().is_ok();
            if !path_ok {
                return Err(err(
                    key("path"),
                    format!("{:?}", stage.path),
                    "must be a path starting with `/`",
                ));
            }
            for (j, fallback) in stage.fallback.iter().enumerate() {
                if let Fallback::Agent(agent) = fallback {
                    if !is_agent(agent) {
                        return Err(err(
                            format!("stages[{i}].fallback[{j}].agent"),
                            format!("{agent:?}"),
                            "no such agent (not a key of [agents])",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn default_deadline() -> Duration {
    Duration::from_secs(60)
}

fn default_retry_allowance() -> u32 {
    4
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_weight() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        let p: PipelineConfig = toml::from_str(
            r#"
            deadline = "60s"
            retry_allowance = 4
            [[stages]]
            name = "nlp_processing"
            agent = "nlp"
            path = "/process"
            weight = 30
            optional = false
            fallback = [ { agent = "nlp_backup" }, { static = { intent = "unknown" } } ]
            "#,
        )
        .unwrap();
        assert_eq!(
            p.stages[0].fallback[0],
            Fallback::Agent("nlp_backup".into())
        );
        assert_eq!(
            p.stages[0].fallback[1],
            Fallback::Static(serde_json::json!({"intent": "unknown"}))
        );
        assert_eq!(p.deadline, Duration::from_secs(60));
        p.validate(|a| a == "nlp" || a == "nlp_backup").unwrap();
    }

    fn pipeline(src: &str) -> PipelineConfig {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn bad_values_are_named() {
        let known = |a: &str| a == "nlp";
        for (src, want) in [
            ("stages = []", "stages = []: a pipeline needs at least one stage"),
            (
                "deadline = \"0s\"\n[[stages]]\nname = \"a\"\nagent = \"nlp\"",
                "deadline = 0s: must be greater than 0",
            ),
            (
                "[[stages]]\nname = \"a\"\nagent = \"gone\"",
                "stages[0].agent = \"gone\": no such agent (not a key of [agents])",
            ),
            (
                "[[stages]]\nname = \"a\"\nagent = \"nlp\"\n[[stages]]\nname = \"a\"\nagent = \"nlp\"",
                "stages[1].name = \"a\": is already the name of an earlier stage",
            ),
            (
                "[[stages]]\nname = \"a\"\nagent = \"nlp\"\npath = \"x\"",
                "stages[0].path = \"x\": must be a path starting with `/`",
            ),
            (
                "[[stages]]\nname = \"a\"\nagent = \"nlp\"\nfallback = [{ static = 1 }, { agent = \"b\" }]",
                "stages[0].fallback[1].agent = \"b\": no such agent (not a key of [agents])",
            ),
        ] {
            let got = pipeline(src).validate(known).unwrap_err().to_string();
            assert_eq!(got, want, "{src}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<PipelineConfig>(
            "[[stages]]\nname = \"a\"\nagent = \"nlp\"\nretries = 2",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("retries"), "{err}");
    }
}
