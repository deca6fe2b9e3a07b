//! Reading the document: `[defaults]` merged into each agent, every section
//! deserialized and validated, and the cross-checks no single struct can make.

use std::collections::BTreeSet;

use agentgate_agent_client::AgentConfig;
use agentgate_config::{join, merge, suggest, Document, Entry, Invalid, Validate};
use toml::de::DeValue;
use toml::Spanned;

use super::{Config, ConfigError};

const DEFINE_ONE: &str = "define at least one [agents.NAME] with a `url`";

/// Reads `src` (see the module docs), returning the first problem in the document.
pub(super) fn read(src: &str, file: &str) -> Result<Config, ConfigError> {
    let (mut doc, root) = Document::parse(src);
    let config = root.and_then(|root| check(&mut doc, root));
    let (line, col, message) = match (doc.first_error(), config) {
        (Some(e), _) => (e.line, e.col, e.message),
        (None, Some(config)) => return Ok(config),
        (None, None) => (1, 1, "invalid config".to_owned()),
    };
    let file = file.to_owned();
    Err(ConfigError {
        file,
        line,
        col,
        message,
    })
}

fn check(doc: &mut Document, root: Spanned<DeValue<'_>>) -> Option<Config> {
    let (span, DeValue::Table(mut root)) = (root.span(), root.into_inner()) else {
        return None;
    };
    let agents = names(doc, "agents", "agent");
    names(doc, "pipelines", "pipeline");
    match doc.get("agents") {
        None => doc.error(0, format!("no agents configured: {DEFINE_ONE}")),
        Some(e) if e.is_table() && agents.is_empty() => {
            doc.error(e.at(), format!("[agents] is empty: {DEFINE_ONE}"))
        }
        Some(_) => {}
    }
    // Before each pipeline's own problems, so that this message wins at its table.
    let pipelines = doc.children("pipelines").filter(|p| p.is_table());
    let stageless: Vec<Entry> = pipelines
        .filter(|p| !doc.children(&p.path).any(|e| e.name == "stages"))
        .cloned()
        .collect();
    for Entry {
        name, path, value, ..
    } in stageless
    {
        let message =
            format!("pipeline `{name}` has no stages: add at least one [[{path}.stages]]");
        doc.error(value.start, message);
    }

    // [defaults] takes every agent key but `url`. It is read on its own too, so that a
    // bad default is told even when every agent overrides it.
    if let Some(DeValue::Table(mut defaults)) = root.remove("defaults").map(Spanned::into_inner) {
        if defaults.remove("url").is_some() {
            doc.unknown_key("defaults.url", &[]);
        }
        let mut alone = defaults.clone();
        let url = DeValue::String("http://defaults.invalid".into());
        alone.insert(Spanned::new(0..0, "url".into()), Spanned::new(0..0, url));
        let tree = Spanned::new(0..0, DeValue::Table(alone));
        let (agent, dropped) = doc.deserialize::<AgentConfig>(tree);
        for p in agent
            .filter(|_| dropped.is_empty())
            .map_or(vec![], |a| a.problems())
        {
            doc.blame(&p, &["defaults"]);
        }
        if let Some(DeValue::Table(agents)) = root.get_mut("agents").map(Spanned::get_mut) {
            for (_, agent) in agents.iter_mut() {
                if let DeValue::Table(agent) = agent.get_mut() {
                    merge(agent, &defaults);
                }
            }
        }
    }

    let (config, dropped) = doc.deserialize::<Config>(Spanned::new(span, DeValue::Table(root)));
    let config = config?;
    // A section with a key that could not be read is not validated: its other values
    // may make sense only with that key.
    let dirty: BTreeSet<String> = dropped.iter().map(|path| section(path)).collect();
    let mut sections = vec![
        ("server".to_owned(), config.server.problems()),
        ("admin".to_owned(), config.admin.problems()),
        ("auth".to_owned(), config.auth.problems()),
        ("progress".to_owned(), config.progress.problems()),
    ];
    let agent_problems = config
        .agents
        .iter()
        .map(|(name, a)| (join("agents", name), a.problems()));
    let pipeline_problems = config
        .pipelines
        .iter()
        .map(|(name, p)| (join("pipelines", name), p.problems()));
    let notify_problems = config
        .notify
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("notify[{i}]"), n.problems()));
    sections.extend(
        agent_problems
            .chain(pipeline_problems)
            .chain(notify_problems),
    );
    for (path, problems) in sections.iter().filter(|(path, _)| !dirty.contains(path)) {
        let inherits = path.starts_with("agents.");
        let layers = if inherits {
            vec![path.as_str(), "defaults"]
        } else {
            vec![path.as_str()]
        };
        problems.iter().for_each(|p| doc.blame(p, &layers));
    }
    let defined: Vec<&str> = agents.iter().map(String::as_str).collect();
    for (name, pipeline) in &config.pipelines {
        let path = join("pipelines", name);
        let unknown = pipeline.agents().filter(|(_, a)| !agents.contains(*a));
        for (key, agent) in unknown.filter(|_| !dirty.contains(&path)) {
            let hint = suggest(agent, &defined).map(|a| format!("; did you mean \"{a}\"?"));
            let (defined, hint) = (defined.join(", "), hint.unwrap_or_default());
            let reason = format!("unknown agent \"{agent}\" (defined: {defined}){hint}");
            doc.blame(&Invalid::named(key, reason), &[&path]);
        }
    }
    if !dirty.contains("auth") {
        check_client_lists(doc, &config);
    }
    Some(config)
}

/// Each client's `pipelines` and `agents` name configured ones.
fn check_client_lists(doc: &mut Document, config: &Config) {
    let pipelines: Vec<&str> = config.pipelines.keys().map(String::as_str).collect();
    let agents: Vec<&str> = config.agents.keys().map(String::as_str).collect();
    for (i, client) in config.auth.clients.iter().enumerate() {
        let lists = [
            ("pipelines", "pipeline", &client.pipelines, &pipelines),
            ("agents", "agent", &client.agents, &agents),
        ];
        for (key, what, list, defined) in lists {
            let unknown = list
                .iter()
                .flatten()
                .filter(|n| !defined.contains(&n.as_str()));
            for name in unknown {
                let hint = suggest(name, defined).map(|a| format!("; did you mean \"{a}\"?"));
                let reason = format!(
                    "unknown {what} \"{name}\" (defined: {}){}",
                    defined.join(", "),
                    hint.unwrap_or_default()
                );
                doc.blame(
                    &Invalid::named(format!("clients[{i}].{key}"), reason),
                    &["auth"],
                );
            }
        }
    }
}

/// Checks the names of the `[section.NAME]` tables (they appear in URLs, JSON and
/// metric labels) and returns them all: an agent with a bad key is still an agent as
/// far as stages are concerned.
fn names(doc: &mut Document, section: &str, what: &str) -> BTreeSet<String> {
    let entries: Vec<Entry> = doc.children(section).cloned().collect();
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let bad = entries
        .iter()
        .filter(|e| e.name.is_empty() || !e.name.chars().all(ok));
    for e in bad {
        let path = join(section, &e.name);
        let message =
            format!("{path}: {what} names may only use ASCII letters, digits, `_` and `-`");
        doc.error(e.at(), message);
    }
    entries.into_iter().map(|e| e.name).collect()
}

/// The section a dropped key was in: `server`, `agents.nlp`, `pipelines.default`.
fn section(path: &[String]) -> String {
    match path {
        [section, name, ..] if section == "agents" || section == "pipelines" => join(section, name),
        [section, index, ..] if section == "notify" => format!("notify[{index}]"),
        [section, ..] => section.clone(),
        [] => String::new(),
    }
}
