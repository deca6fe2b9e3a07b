//! The `[pipelines.P]` keys of SPEC §2.

use std::fmt;
use std::time::Duration;

use agentgate_config::{Invalid, Validate};
use serde::de::{self, Deserializer, MapAccess, Visitor};
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
    /// The stages, in order (at least one: [`Validate::problems`] says so).
    #[serde(default, deserialize_with = "agentgate_config::array_of_tables")]
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
    #[serde(default, deserialize_with = "fallbacks")]
    pub fallback: Vec<Fallback>,
    /// What the stage's output is when its agent streams its answer (SPEC §6).
    #[serde(default)]
    pub stream_result: StreamResult,
}

/// `stream_result`: a streamed answer's chunks made into the stage's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamResult {
    /// `"array"` (default): every chunk, in order (`[]` when there was none).
    #[default]
    Array,
    /// `"last"`: the last chunk (`null` when there was none).
    Last,
    /// `"concat"`: one string, the string chunks and the `text`, `delta` or `content`
    /// string field of object chunks joined (`""` when there was none).
    Concat,
}

/// A fallback: another agent (same path and body), or a static output. Written
/// `{ agent = "nlp_backup" }` or `{ static = { intent = "unknown" } }`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// `{ agent = "nlp_backup" }`.
    Agent(String),
    /// `{ static = { intent = "unknown" } }`.
    Static(serde_json::Value),
}

/// A pipeline setting that cannot work. The key is relative to the pipeline's table
/// (`stages[1].agent`); the config loader prefixes `pipelines.NAME.`.
pub type PipelineConfigError = Invalid;

// === impl PipelineConfig ===

impl PipelineConfig {
    /// Checks every key ([`Validate::problems`]) and that every agent a stage or a
    /// fallback names is one for which `is_agent` holds; the error is the first problem.
    pub fn validate(&self, is_agent: impl Fn(&str) -> bool) -> Result<(), PipelineConfigError> {
        let unknown = self.agents().find(|(_, agent)| !is_agent(agent));
        let unknown = unknown.map(|(key, agent)| {
            Invalid::new(
                key,
                format!("{agent:?}"),
                "no such agent (not a key of [agents])",
            )
        });
        match self.problems().into_iter().chain(unknown).next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every agent the pipeline names, with its key: `stages[0].agent`,
    /// `stages[0].fallback[1].agent`, … in order.
    pub fn agents(&self) -> impl Iterator<Item = (String, &str)> {
        self.stages.iter().enumerate().flat_map(|(i, stage)| {
            let fallbacks = stage.fallback.iter().enumerate();
            let fallbacks = fallbacks.filter_map(move |(j, fallback)| match fallback {
                Fallback::Agent(agent) => {
                    Some((format!("stages[{i}].fallback[{j}].agent"), agent.as_str()))
                }
                Fallback::Static(_) => None,
            });
            std::iter::once((format!("stages[{i}].agent"), stage.agent.as_str())).chain(fallbacks)
        })
    }
}

impl Validate for PipelineConfig {
    fn problems(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.deadline.is_zero() {
            out.push(Invalid::new("deadline", "0s", "must be greater than 0"));
        }
        if self.stages.is_empty() {
            out.push(Invalid::named(
                "stages",
                "a pipeline needs at least one stage",
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let key = |field: &str| format!("stages[{i}].{field}");
            for (field, value) in [("name", &stage.name), ("agent", &stage.agent)] {
                if value.is_empty() {
                    out.push(Invalid::new(key(field), "\"\"", "must not be empty"));
                }
            }
            let earlier = self.stages[..i].iter().position(|s| s.name == stage.name);
            if let (Some(first), false) = (earlier, stage.name.is_empty()) {
                let reason = format!(
                    "duplicate stage name {:?} (also stages[{first}])",
                    stage.name
                );
                out.push(Invalid::named(key("name"), reason));
            }
            if !stage.path.starts_with('/') {
                out.push(Invalid::new(
                    key("path"),
                    format!("{:?}", stage.path),
                    "must start with `/`",
                ));
            } else if stage.path.parse::<http::uri::PathAndQuery>().is_err() {
                let value = format!("{:?}", stage.path);
                out.push(Invalid::new(key("path"), value, "must be a valid URL path"));
            }
            if stage.weight == 0 {
                let reason = "must be at least 1 (a stage's share of the progress bar)";
                out.push(Invalid::new(key("weight"), 0, reason));
            }
            for (j, fallback) in stage.fallback.iter().enumerate() {
                if *fallback == Fallback::Agent(stage.agent.clone()) {
                    let reason = format!(
                        "fallback to itself: {:?} is the stage's own agent",
                        stage.agent
                    );
                    out.push(Invalid::named(key(&format!("fallback[{j}].agent")), reason));
                }
            }
        }
        out
    }
}

// === impl Fallback ===

impl<'de> Deserialize<'de> for Fallback {
    /// Written by hand for messages that say what to write: an empty table, a table with
    /// both keys (reported at the second) or a non-table each get their own.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Agent,
            Static,
        }

        /// A second key of a fallback table, rejected where it is written.
        struct NotBoth;

        impl<'de> de::DeserializeSeed<'de> for NotBoth {
            type Value = ();

            fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
                Err(de::Error::custom(
                    "a fallback is either `agent` or `static`, not both",
                ))
            }
        }

        struct FallbackVisitor;

        impl<'de> Visitor<'de> for FallbackVisitor {
            type Value = Fallback;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fallback, A::Error> {
                let fallback = match map.next_key::<Kind>()? {
                    Some(Kind::Agent) => Fallback::Agent(map.next_value()?),
                    Some(Kind::Static) => Fallback::Static(map.next_value()?),
                    None => {
                        return Err(de::Error::custom(
                            "expected { agent = \"NAME\" } or { static = VALUE }",
                        ))
                    }
                };
                map.next_key_seed(NotBoth)?;
                Ok(fallback)
            }
        }

        d.deserialize_map(FallbackVisitor)
    }
}

/// `fallback = [ … ]`, with an example when it is not an array.
fn fallbacks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Fallback>, D::Error> {
    agentgate_config::seq(
        d,
        "an array such as [ { agent = \"backup\" }, { static = { … } } ]",
    )
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
            [[stages]]
            name = "answer"
            agent = "nlp"
            stream_result = "concat"
            "#,
        )
        .unwrap();
        assert_eq!(p.stages[0].stream_result, StreamResult::Array);
        assert_eq!(p.stages[1].stream_result, StreamResult::Concat);
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
        let stage = "[[stages]]\nname = \"a\"\nagent = \"nlp\"";
        for (src, want) in [
            (
                "stages = []".to_owned(),
                "stages: a pipeline needs at least one stage",
            ),
            (
                format!("deadline = \"0s\"\n{stage}"),
                "deadline = 0s: must be greater than 0",
            ),
            (
                "[[stages]]\nname = \"a\"\nagent = \"gone\"".to_owned(),
                "stages[0].agent = \"gone\": no such agent (not a key of [agents])",
            ),
            (
                format!("{stage}\n{stage}"),
                "stages[1].name: duplicate stage name \"a\" (also stages[0])",
            ),
            (
                format!("{stage}\npath = \"x\""),
                "stages[0].path = \"x\": must start with `/`",
            ),
            (
                format!("{stage}\nweight = 0"),
                "stages[0].weight = 0: must be at least 1 (a stage's share of the progress bar)",
            ),
            (
                format!("{stage}\nfallback = [{{ static = 1 }}, {{ agent = \"nlp\" }}]"),
                "stages[0].fallback[1].agent: fallback to itself: \"nlp\" is the stage's own agent",
            ),
            (
                format!("{stage}\nfallback = [{{ static = 1 }}, {{ agent = \"b\" }}]"),
                "stages[0].fallback[1].agent = \"b\": no such agent (not a key of [agents])",
            ),
        ] {
            let got = pipeline(&src).validate(known).unwrap_err().to_string();
            assert_eq!(got, want, "{src}");
        }
    }

    #[test]
    fn every_problem_is_told() {
        let p = pipeline("deadline = \"0s\"\n[[stages]]\nname = \"\"\nagent = \"\"\nweight = 0");
        let keys: Vec<String> = p.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "deadline",
                "stages[0].name",
                "stages[0].agent",
                "stages[0].weight"
            ]
        );
    }

    #[test]
    fn shapes_that_cannot_be_read_say_what_to_write() {
        let stage = "[[stages]]\nname = \"a\"\nagent = \"nlp\"\n";
        for (src, want) in [
            ("retries = 2", "unknown field `retries`"),
            (
                "stream_result = \"first\"",
                "unknown variant `first`, expected one of `array`, `last`, `concat`",
            ),
            (
                "fallback = [ {} ]",
                "expected { agent = \"NAME\" } or { static = VALUE }",
            ),
            (
                "fallback = [ { agent = \"b\", static = 1 } ]",
                "a fallback is either `agent` or `static`, not both",
            ),
            (
                "fallback = [ { url = \"x\" } ]",
                "unknown variant `url`, expected `agent` or `static`",
            ),
            (
                "fallback = [ \"b\" ]",
                "invalid type: string \"b\", expected a table",
            ),
            (
                "fallback = { agent = \"b\" }",
                "invalid type: map, expected an array such as",
            ),
        ] {
            let err = toml::from_str::<PipelineConfig>(&format!("{stage}{src}")).unwrap_err();
            assert!(err.message().starts_with(want), "{src}: {}", err.message());
        }
        let err = toml::from_str::<PipelineConfig>("stages = { name = \"s\" }").unwrap_err();
        assert_eq!(
            err.message(),
            "invalid type: map, expected an array of tables"
        );
    }
}
