//! `docs/configuration.md` tells the truth: its tables list exactly the keys of the
//! config structs, and every default written there is the one the code uses.
//!
//! The keys come from the structs themselves: each one rejects an unknown key with
//! serde's "unknown field `x`, expected one of `a`, `b`, …", which lists them all. The
//! defaults are checked by loading a config that sets every documented default
//! explicitly and comparing it with one that sets none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use agentgate_agent_client::AgentConfig;
use agentgate_circuit_breaker::CircuitBreakerConfig;
use agentgate_gateway::config::{
    AdminConfig, AuthConfig, ClientConfig, Config, ProgressConfig, ServerConfig,
};
use agentgate_gateway::notify::NotifyConfig;
use agentgate_pipeline::{PipelineConfig, StageConfig};
use agentgate_retry::RetryConfig;
use agentgate_tls::{ClientTlsConfig, ServerTlsConfig};
use serde::de::DeserializeOwned;

/// One row of a table: the key and its default as written (`None` for "(required)",
/// "(none)", "(table)").
type Rows = Vec<(String, Option<String>)>;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md")
}

/// The tables of the document, by the heading above them.
fn tables(doc: &str) -> BTreeMap<String, Rows> {
    let mut out: BTreeMap<String, Rows> = BTreeMap::new();
    let mut heading = String::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| `key` | default | meaning |` → ["", "`key`", "default", "meaning", ""]
        let [_, key, default, _, _] = cells[..] else {
            continue;
        };
        let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
            continue;
        };
        let default = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .map(str::to_owned);
        out.entry(heading.clone())
            .or_default()
            .push((key.to_owned(), default));
    }
    out
}

/// Every key of `T`, from serde's own complaint about an unknown one.
fn keys_of<T: DeserializeOwned>(required: &str) -> BTreeSet<String> {
    let src = format!("{required}\nzz_not_a_key = 1\n");
    let err = match toml::from_str::<T>(&src) {
        Ok(_) => panic!("{} accepted an unknown key", std::any::type_name::<T>()),
        Err(e) => e.message().to_owned(),
    };
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let (_, list) = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no key list in {err:?}"));
    let list = list.strip_prefix("one of ").unwrap_or(list);
    list.split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let tables = tables(&doc());
    let sections: [(&str, BTreeSet<String>); 13] = [
        ("`[server]`", keys_of::<ServerConfig>("")),
        (
            "`[server.tls]`",
            keys_of::<ServerTlsConfig>("cert_file = \"a\"\nkey_file = \"b\""),
        ),
        ("`[admin]`", keys_of::<AdminConfig>("")),
        ("`[auth]`", keys_of::<AuthConfig>("")),
        (
            "`[[auth.clients]]`",
            keys_of::<ClientConfig>("name = \"x\""),
        ),
        ("`[progress]`", keys_of::<ProgressConfig>("")),
        (
            "`[agents.NAME]` and `[defaults]`",
            keys_of::<AgentConfig>("url = \"http://a\""),
        ),
        (
            "`circuit_breaker` (of `[defaults]` or `[agents.NAME]`)",
            keys_of::<CircuitBreakerConfig>(""),
        ),
        (
            "`retry` (of `[defaults]` or `[agents.NAME]`)",
            keys_of::<RetryConfig>(""),
        ),
        (
            "`tls` (of `[defaults]` or `[agents.NAME]`)",
            keys_of::<ClientTlsConfig>(""),
        ),
        ("`[pipelines.NAME]`", keys_of::<PipelineConfig>("")),
        ("`[[pipelines.NAME.stages]]`", keys_of::<StageConfig>("")),
        (
            "`[[notify]]`",
            keys_of::<NotifyConfig>("url = \"http://h\""),
        ),
    ];
    assert_eq!(
        tables.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        sections.iter().map(|(h, _)| *h).collect::<BTreeSet<_>>(),
        "a table per section"
    );
    for (heading, keys) in sections {
        let documented: BTreeSet<String> = tables[heading].iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(documented, keys, "keys of {heading}");
    }
}

#[test]
fn every_documented_default_is_the_default() {
    let tables = tables(&doc());
    let defaults = |heading: &str| -> String {
        tables[heading]
            .iter()
            .filter_map(|(k, d)| Some(format!("{k} = {}\n", d.as_ref()?)))
            .collect()
    };
    let agent = "`[agents.NAME]` and `[defaults]`";
    let explicit = format!(
        "[server]\n{}\n[admin]\n{}\n[auth]\n{}\n[progress]\n{}\n\
         [defaults]\n{}\n[defaults.circuit_breaker]\n{}\n[defaults.retry]\n{}\n\
         [agents.a]\nurl = \"http://a\"\n\
         [pipelines.p]\n{}\n[[pipelines.p.stages]]\nname = \"s\"\nagent = \"a\"\n{}\n\
         [[notify]]\nurl = \"http://h\"\n{}",
        defaults("`[server]`"),
        defaults("`[admin]`"),
        defaults("`[auth]`"),
        defaults("`[progress]`"),
        defaults(agent),
        defaults("`circuit_breaker` (of `[defaults]` or `[agents.NAME]`)"),
        defaults("`retry` (of `[defaults]` or `[agents.NAME]`)"),
        defaults("`[pipelines.NAME]`"),
        defaults("`[[pipelines.NAME.stages]]`"),
        defaults("`[[notify]]`"),
    );
    let implicit = "[agents.a]\nurl = \"http://a\"\n\
                    [pipelines.p]\n[[pipelines.p.stages]]\nname = \"s\"\nagent = \"a\"\n\
                    [[notify]]\nurl = \"http://h\"\n";
    let explicit = Config::from_toml(&explicit, "documented.toml")
        .unwrap_or_else(|e| panic!("the documented defaults do not load: {e}"));
    let implicit = Config::from_toml(implicit, "implicit.toml").unwrap();
    assert_eq!(format!("{explicit:?}"), format!("{implicit:?}"));
}
