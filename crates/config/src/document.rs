//! A TOML document read into config structs, with every problem told at its position.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::Invalid;

/// A byte range of the document.
pub type Span = Range<usize>;
/// A value of the spanned tree, as `toml` parses it.
pub type Value<'i> = Spanned<DeValue<'i>>;

/// Names from other resilience libraries (and agentgate's seed project), mapped to
/// ours. Only hints: one is given when ours is a key of the table at hand.
const ALIASES: &[(&str, &str)] = &[
    ("recovery_timeout", "open_duration"),
    ("reset_timeout", "open_duration"),
    ("wait_duration_in_open_state", "open_duration"),
    ("failure_threshold", "consecutive_failures"),
    ("sliding_window", "window"),
    ("max_retries", "max_attempts"),
    ("retries", "max_attempts"),
    ("initial_delay", "base_delay"),
    ("deadline", "timeout"),
];

/// A parsed TOML document: where each key and value is written, and the problems found
/// in it by position.
///
/// Problems come from three places, each worded for config authors and naming the key
/// path (`agents.nlp.timeout = "0s": must be greater than 0`): syntax errors
/// ([`Document::parse`]), serde errors ([`Document::deserialize`], which finds them all)
/// and [`Invalid`]s ([`Document::blame`]). At one position the first problem recorded
/// wins (an inherited value's problem is told once); [`Document::first_error`] is the
/// first in the document, so fixing errors top to bottom always works.
#[derive(Debug)]
pub struct Document {
    src: String,
    entries: Vec<Entry>,
    errors: BTreeMap<usize, String>,
    /// The values, as written, that deserialized as [`Secret`](crate::Secret)s.
    secrets: BTreeSet<String>,
}

/// A key or an array item of the document, as written.
#[derive(Clone, Debug)]
pub struct Entry {
    /// `agents.nlp.timeout`, `pipelines.p.stages[0]`; `""` for the document.
    pub path: String,
    /// The key (unquoted); `""` for an array item and the document.
    pub name: String,
    /// Where the key is written (`None` for an array item and the document).
    pub key: Option<Span>,
    /// Where the value is written.
    pub value: Span,
    /// `a string`, `a table`, …
    kind: &'static str,
    /// A string value, for the words about a bad duration.
    string: Option<String>,
    parent: usize,
}

/// The first problem of a document: 1-based line and column (in characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong, naming the key path.
    pub message: String,
}

// === impl Document ===

impl Document {
    /// Parses `src`. A syntax error is recorded and gives no tree.
    pub fn parse(src: &str) -> (Document, Option<Value<'_>>) {
        let mut doc = Document {
            src: src.to_owned(),
            entries: Vec::new(),
            errors: BTreeMap::new(),
            secrets: BTreeSet::new(),
        };
        match DeTable::parse(src) {
            Ok(root) => {
                let root = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
                doc.index(String::new(), "", None, &root, 0);
                (doc, Some(root))
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let found = src.get(span.clone()).unwrap_or("").trim();
                let message = match e.message() {
                    "duplicate key" if !found.is_empty() => format!("duplicate key `{found}`"),
                    other => format!("invalid TOML: {}", other.trim()),
                };
                doc.error(span.start, message);
                (doc, None)
            }
        }
    }

    /// Deserializes `T` from `value` (the document or a tree merged from it). After each
    /// error, recorded at its key or value, the key at fault is dropped and the rest read
    /// again, so every error is found; the paths of the keys dropped are returned too.
    pub fn deserialize<T: DeserializeOwned>(
        &mut self,
        mut value: Value<'_>,
    ) -> (Option<T>, Vec<Vec<String>>) {
        let mut dropped: Vec<(Vec<String>, Span)> = Vec::new();
        loop {
            let (result, secrets) =
                crate::secret::recording(|| T::deserialize(ValueDeserializer::from(value.clone())));
            self.secrets.extend(secrets);
            let err = match result {
                Ok(config) => return (Some(config), dropped.into_iter().map(|d| d.0).collect()),
                Err(err) => err,
            };
            let span = err.span().unwrap_or(0..0);
            // A table we dropped a key from may now miss it, or be empty: that is no news.
            let missing = err.message().strip_prefix("missing field `");
            let missing = missing.map(|f| f.trim_end_matches('`'));
            let echo = dropped.iter().any(|(path, table)| {
                *table == span && missing.is_none_or(|f| path.last().is_some_and(|k| k == f))
            });
            if !echo {
                self.serde_error(&span, err.message());
            }
            match remove(&mut value, &span) {
                Some(removed) => dropped.push(removed),
                None => return (None, dropped.into_iter().map(|d| d.0).collect()),
            }
        }
    }

    /// Records `problem` at the most specific of `layers` (table paths, e.g.
    /// `["agents.nlp", "defaults"]`) that writes its key, or the other key of a pair;
    /// when none does, at the innermost table written, as `… (the default): …`.
    pub fn blame(&mut self, problem: &Invalid, layers: &[&str]) {
        for layer in layers {
            for p in problem.blames() {
                if let Some(i) = self.find(&format!("{layer}.{}", p.key)) {
                    let message = format!("{}: {}", self.show(i, p.value.is_some()), p.reason);
                    return self.error(self.entries[i].value.start, message);
                }
            }
        }
        let path = format!(
            "{}.{}",
            layers.first().copied().unwrap_or_default(),
            problem.key
        );
        let mut owner = path.as_str();
        let at = loop {
            match owner.rfind(['.', '[']) {
                Some(end) => owner = &owner[..end],
                None => break 0,
            }
            if let Some(i) = self.find(owner) {
                break self.entries[i].value.start;
            }
        };
        let value = problem.value.as_ref().map(|v| format!(" = {v}"));
        let value = value.unwrap_or_default();
        self.error(
            at,
            format!("{path}{value} (the default): {}", problem.reason),
        );
    }

    /// Records that the key at `path` is not one of `known`, with a hint.
    pub fn unknown_key(&mut self, path: &str, known: &[&str]) {
        if let Some(i) = self.find(path) {
            self.unknown(i, known);
        }
    }

    /// Records `message` at byte `offset`, unless a problem is recorded there already.
    pub fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.entry(offset).or_insert_with(|| message.into());
    }

    /// The entry at `path`, if written.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.find(path).map(|i| &self.entries[i])
    }

    /// The keys of the table at `path`, in the document's order of entries.
    pub fn children(&self, path: &str) -> impl Iterator<Item = &Entry> {
        let parent = self.find(path).filter(|_| !path.is_empty());
        let children = self
            .entries
            .iter()
            .filter(move |e| Some(e.parent) == parent);
        children.filter(|e| e.key.is_some())
    }

    /// The problem that comes first in the document.
    pub fn first_error(&self) -> Option<Located> {
        let (&offset, message) = self.errors.iter().next()?;
        let before = self
            .src
            .get(..offset.min(self.src.len()))
            .unwrap_or(&self.src);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Some(Located {
            line: before.matches('\n').count() + 1,
            col: before[line_start..].chars().count() + 1,
            message: message.clone(),
        })
    }

    fn index(
        &mut self,
        path: String,
        name: &str,
        key: Option<Span>,
        value: &Value<'_>,
        parent: usize,
    ) {
        let at = self.entries.len();
        let string = match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => None,
        };
        self.entries.push(Entry {
            path: path.clone(),
            name: name.to_owned(),
            key,
            value: value.span(),
            kind: a_type(value.get_ref()),
            string,
            parent,
        });
        match value.get_ref() {
            DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    self.index(join(&path, k.get_ref()), k.get_ref(), Some(k.span()), v, at);
                }
            }
            DeValue::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.index(format!("{path}[{i}]"), "", None, v, at);
                }
            }
            _ => {}
        }
    }

    /// Words a serde error for config authors, at the key or value it is about.
    fn serde_error(&mut self, span: &Span, message: &str) {
        let Some(exact) = self.at(span) else {
            return self.error(span.start, message);
        };
        let entry = &self.entries[exact];
        let expected = message.rsplit_once(", expected ").map(|(_, e)| humanize(e));
        let expects_table = expected.as_deref() == Some("a table");
        if entry.key.as_ref() == Some(span) {
            if message.starts_with("unknown field") || message.starts_with("unknown variant") {
                let known = expected
                    .iter()
                    .flat_map(|e| e.split('`').skip(1).step_by(2));
                return self.unknown(exact, &known.collect::<Vec<_>>());
            }
            let message = format!("{}: {message}", self.show(entry.parent, false));
            return self.error(span.start, message);
        }
        // A scalar in an array is shown as the whole array: `retry_on = ["connect", 700]`.
        let mut shown = exact;
        while shown != 0 && self.entries[shown].key.is_none() && !expects_table {
            if self.entries[shown].kind == "a table" {
                break;
            }
            shown = self.entries[shown].parent;
        }
        let (entry, at) = (&self.entries[exact], &self.entries[shown]);
        let text = if let Some(field) = message.strip_prefix("missing field ") {
            format!("missing required key {field} {}", self.location(shown))
        } else {
            let mut expected = expected.unwrap_or_default();
            if expected == "an array of tables" {
                expected = format!("{expected} ([[{}]])", at.path);
            }
            let what = match message.split_once(": ").map(|(kind, _)| kind) {
                _ if message.ends_with("expected a duration") => duration_problem(entry),
                Some("invalid type") => format!("expected {expected}, found {}", entry.kind),
                Some("invalid value") => format!("expected {expected}"),
                _ => message.to_owned(),
            };
            format!("{}: {what}", self.show(shown, !expects_table))
        };
        self.error(at.value.start, text);
    }

    fn unknown(&mut self, i: usize, known: &[&str]) {
        let entry = &self.entries[i];
        let hint = suggest(&entry.name, known).map(|k| format!(" (did you mean `{k}`?)"));
        let (name, location) = (&entry.name, self.location(entry.parent));
        let message = format!(
            "unknown key `{name}` {location}{}",
            hint.unwrap_or_default()
        );
        self.error(entry.at(), message);
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.path == path)
    }

    /// The entry whose key is `span`, or the innermost whose value holds it.
    fn at(&self, span: &Span) -> Option<usize> {
        let entries = self.entries.iter().enumerate();
        if let Some((i, _)) = entries.clone().find(|(_, e)| e.key.as_ref() == Some(span)) {
            return Some(i);
        }
        let holding =
            entries.filter(|(_, e)| e.value.start <= span.start && span.end <= e.value.end);
        let innermost = holding.min_by_key(|(i, e)| (e.value.len(), usize::MAX - i));
        innermost.map(|(i, _)| i)
    }

    /// `agents.nlp.timeout = "0s"`: the key path and, if `value`, the value as written.
    ///
    /// This is the one place that prints a value. Secrets (SPEC §6: header values, keys)
    /// are shown as `"***"`: [`Secret`](crate::Secret) records the values it
    /// deserializes, and a string written as one of those is not printed.
    fn show(&self, i: usize, value: bool) -> String {
        let entry = &self.entries[i];
        let text = self.src.get(entry.value.clone()).unwrap_or("").trim();
        if !value || entry.kind == "a table" || text.is_empty() || text.contains('\n') {
            return entry.path.clone();
        }
        if entry
            .string
            .as_ref()
            .is_some_and(|s| self.secrets.contains(s))
        {
            return format!("{} = \"***\"", entry.path);
        }
        match text.char_indices().nth(57) {
            Some((end, _)) if text.chars().count() > 60 => {
                format!("{} = {}…", entry.path, &text[..end])
            }
            _ => format!("{} = {text}", entry.path),
        }
    }

    /// `in [agents.nlp]`, `in pipelines.default.stages[0]`, `at the top level`.
    fn location(&self, i: usize) -> String {
        match self.entries[i].path.as_str() {
            "" => "at the top level".to_owned(),
            path if path.ends_with(']') => format!("in {path}"),
            path => format!("in [{path}]"),
        }
    }
}

// === impl Entry ===

impl Entry {
    /// Where a problem with the entry itself is told: its key, or its value (an item).
    pub fn at(&self) -> usize {
        self.key.as_ref().unwrap_or(&self.value).start
    }

    /// Whether the value is a table.
    pub fn is_table(&self) -> bool {
        self.kind == "a table"
    }
}

// === helpers ===

/// Fills `table` with the keys of `defaults` it lacks, key by key down nested tables,
/// keeping each value's position (an inherited value is told where it is written).
pub fn merge<'i>(table: &mut DeTable<'i>, defaults: &DeTable<'i>) {
    for (key, value) in defaults.iter() {
        match (table.get_mut(key.get_ref().as_ref()), value.get_ref()) {
            (None, _) => drop(table.insert(key.clone(), value.clone())),
            (Some(own), DeValue::Table(inherited)) => {
                if let DeValue::Table(own) = own.get_mut() {
                    merge(own, inherited);
                }
            }
            (Some(_), _) => {}
        }
    }
}

/// `parent.key`, quoting a key that is not a bare TOML key.
pub fn join(parent: &str, key: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let key = match key.chars().all(bare) && !key.is_empty() {
        true => key.to_owned(),
        false => format!("{key:?}"),
    };
    match parent {
        "" => key,
        parent => format!("{parent}.{key}"),
    }
}

/// A known name close to `name`: ours for a known alias, a typo, or a prefix.
pub fn suggest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let alias = ALIASES.iter().find(|(theirs, _)| *theirs == name);
    let alias = alias.and_then(|(_, ours)| known.iter().find(|k| *k == ours));
    let typo = || {
        let close = known.iter().map(|k| (strsim::levenshtein(name, k), k));
        let close = close.filter(|(d, k)| *d <= 2 && *d < k.len());
        close.min_by_key(|(d, _)| *d).map(|(_, k)| k)
    };
    // `listen_on` → `listen`, `timeout_ms` → `timeout`.
    let prefix = || {
        let prefixes = known.iter().filter(|k| k.len() >= 4);
        let prefixes = prefixes.filter(|k| name.starts_with(**k) || k.starts_with(name));
        prefixes.max_by_key(|k| k.len())
    };
    alias.or_else(typo).or_else(prefix).copied()
}

/// Removes the innermost key or item whose key is `span` or whose value holds it;
/// returns its path (`["agents", "a", "retry", "max_delay"]`) and the span of the table
/// or array it was in.
fn remove(value: &mut Value<'_>, span: &Span) -> Option<(Vec<String>, Span)> {
    let hit = |key: Option<Span>, v: &Value<'_>| {
        let holds = v.span().start <= span.start && span.end <= v.span().end;
        key.as_ref() == Some(span) || (holds && !span.is_empty())
    };
    let outer = value.span();
    let (name, inner) = match value.get_mut() {
        DeValue::Table(t) => t.iter_mut().find_map(|(k, v)| {
            let name = k.get_ref().to_string();
            let inner = remove(v, span).map(|found| (name.clone(), Some(found)));
            inner.or_else(|| hit(Some(k.span()), v).then_some((name, None)))
        }),
        DeValue::Array(items) => items.iter_mut().enumerate().find_map(|(i, v)| {
            let inner = remove(v, span).map(|found| (format!("[{i}]"), Some(found)));
            inner.or_else(|| hit(None, v).then(|| (format!("[{i}]"), None)))
        }),
        _ => None,
    }?;
    let (path, table) = match (inner, value.get_mut()) {
        (Some(found), _) => found,
        (None, DeValue::Table(t)) => {
            t.remove(name.as_str());
            (Vec::new(), outer)
        }
        (None, DeValue::Array(items)) => {
            let i: usize = name.trim_matches(['[', ']']).parse().ok()?;
            let kept = items.iter().enumerate().filter(|(j, _)| *j != i);
            *items = kept.map(|(_, v)| v.clone()).collect();
            (Vec::new(), outer)
        }
        (None, _) => return None,
    };
    Some((std::iter::once(name).chain(path).collect(), table))
}

/// serde's name for what it expected, in words for config authors.
fn humanize(expected: &str) -> String {
    match expected {
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "usize" => "a non-negative integer",
        "f64" | "f32" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        s if s.starts_with("struct ") => "a table",
        other => other,
    }
    .to_owned()
}

fn duration_problem(entry: &Entry) -> String {
    const EXAMPLE: &str = "write e.g. \"250ms\", \"30s\" or \"5m\"";
    match entry.string.as_deref().map(humantime::parse_duration) {
        Some(Err(e)) => format!("invalid duration ({e}); {EXAMPLE}"),
        Some(Ok(_)) => format!("invalid duration; {EXAMPLE}"),
        None => format!(
            "expected a duration string, found {}; {EXAMPLE}",
            entry.kind
        ),
    }
}

fn a_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validate;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        #[serde(default = "one")]
        min_idle: u32,
        #[serde(default = "ten")]
        max_idle: u32,
    }

    fn one() -> u32 {
        1
    }

    fn ten() -> u32 {
        10
    }

    impl Validate for Pool {
        fn problems(&self) -> Vec<Invalid> {
            let pair = Invalid::new("min_idle", self.min_idle, "must not exceed max_idle").or(
                Invalid::new("max_idle", self.max_idle, "must not be below min_idle"),
            );
            (self.min_idle > self.max_idle)
                .then_some(pair)
                .into_iter()
                .collect()
        }
    }

    /// Reads `[pool]` with `[defaults]` merged in, as the gateway reads agents.
    fn first_error(src: &str) -> Option<Located> {
        let (mut doc, root) = Document::parse(src);
        let Some(DeValue::Table(mut root)) = root.map(Spanned::into_inner) else {
            return doc.first_error();
        };
        let defaults = root.remove("defaults").map(Spanned::into_inner);
        let mut pool = root.remove("pool").expect("a [pool]");
        if let (DeValue::Table(pool), Some(DeValue::Table(d))) = (pool.get_mut(), &defaults) {
            merge(pool, d);
        }
        if let (Some(pool), _) = doc.deserialize::<Pool>(pool) {
            for p in pool.problems() {
                doc.blame(&p, &["pool", "defaults"]);
            }
        }
        doc.first_error()
    }

    #[track_caller]
    fn fails(src: &str, line: usize, col: usize, message: &str) {
        let want = Located {
            line,
            col,
            message: message.to_owned(),
        };
        assert_eq!(first_error(src), Some(want));
    }

    #[test]
    fn every_error_is_found_and_the_first_is_told() {
        // serde meets `min_idle` first (keys are sorted); `max_idel` comes first here.
        fails(
            "[pool]\nmax_idel = 1\nmin_idle = \"x\"\n",
            2,
            1,
            "unknown key `max_idel` in [pool] (did you mean `max_idle`?)",
        );
        fails(
            "[pool]\nmin_idle = -1\n",
            2,
            12,
            "pool.min_idle = -1: expected an integer from 0 to 4294967295",
        );
        fails(
            "[pool]\nmin_idle = 1\nmin_idle = 2\n",
            3,
            1,
            "duplicate key `min_idle`",
        );
    }

    #[test]
    fn secrets_are_shown_as_stars() {
        #[derive(Debug, serde::Deserialize)]
        struct Hook {
            token: crate::Secret<String>,
        }
        let told = |src: &str, blame: bool| {
            let (mut doc, root) = Document::parse(src);
            let Some(DeValue::Table(mut root)) = root.map(Spanned::into_inner) else {
                unreachable!("valid TOML");
            };
            let hook = root.remove("hook").expect("a [hook]");
            if let (Some(hook), _) = doc.deserialize::<Hook>(hook) {
                assert_eq!(format!("{hook:?}"), "Hook { token: \"***\" }");
                if blame {
                    let p = Invalid::new("token", &hook.token, "is too short");
                    doc.blame(&p, &["hook"]);
                }
            }
            doc.first_error().expect("an error").message
        };
        assert_eq!(
            told(
                "[hook]\ntoken = \"Bearer ${AGENTGATE_DOC_TEST_UNSET}\"\n",
                false
            ),
            "hook.token = \"***\": environment variable `AGENTGATE_DOC_TEST_UNSET` is not set"
        );
        assert_eq!(
            told("[hook]\ntoken = \"s3cr3t\"\n", true),
            "hook.token = \"***\": is too short"
        );
    }

    #[test]
    fn inherited_values_are_told_where_they_are_written() {
        // The pair: only `max_idle` is written, in [defaults].
        fails(
            "[defaults]\nmax_idle = 0\n[pool]\nmin_idle = 2\n",
            4,
            12,
            "pool.min_idle = 2: must not exceed max_idle",
        );
        fails(
            "[defaults]\nmax_idle = 0\n[pool]\n",
            2,
            12,
            "defaults.max_idle = 0: must not be below min_idle",
        );
        fails(
            "[pool]\nmin_idle = 11\n",
            2,
            12,
            "pool.min_idle = 11: must not exceed max_idle",
        );
    }

    #[test]
    fn unwritten_keys_are_told_at_their_table() {
        let (mut doc, _) = Document::parse("[pool]\n");
        doc.blame(&Invalid::new("max_idle", 10, "must be even"), &["pool"]);
        let want = "pool.max_idle = 10 (the default): must be even";
        assert_eq!(
            doc.first_error().map(|e| (e.line, e.col, e.message)),
            Some((1, 1, want.to_owned()))
        );
    }

    #[test]
    fn suggestions() {
        let known = ["window", "open_duration", "listen"];
        assert_eq!(suggest("recovery_timeout", &known), Some("open_duration"));
        assert_eq!(suggest("windw", &known), Some("window"));
        assert_eq!(suggest("listen_on", &known), Some("listen"));
        assert_eq!(suggest("zzz", &known), None);
        assert_eq!(join("agents", "a b"), "agents.\"a b\"");
    }
}
