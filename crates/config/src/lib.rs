//! What agentgate's config structs share, so that each crate can own its keys.
//!
//! Every layer crate (circuit breaker, retry, agent client, pipeline) owns its config
//! struct: its keys are the struct's fields, its defaults are the struct's, and its
//! checks are its [`Validate`] impl. A check names its key relative to its own struct
//! (`minimum_calls`, `stages[1].name`) and never deals with files or positions; a struct
//! that holds another prefixes the inner struct's keys with [`Invalid::within`].
//!
//! With the `toml` feature, `Document` reads a TOML file into those structs (the
//! gateway's config does) and tells every problem as `line:col: message` naming the
//! key path and the value as written: serde's errors, found all at once, and each
//! [`Invalid`] at the most specific place its key is written (`[agents.X]` before
//! `[defaults]`, for instance). No list of keys is kept anywhere but in the structs.
//!
//! Adding a key to a layer is adding a field (with its serde attributes) and, when some
//! values cannot work, a line in that struct's [`Validate::problems`]. Nested tables and
//! arrays of tables work the same way (see [`array_of_tables`]).
//!
//! # Example
//!
//! ```
//! use agentgate_config::{Invalid, Validate};
//!
//! struct Pool { min_idle: u32, max_idle: u32 }
//!
//! impl Validate for Pool {
//!     fn problems(&self) -> Vec<Invalid> {
//!         let mut out = Vec::new();
//!         if self.min_idle > self.max_idle {
//!             // A pair: the gateway blames whichever key the user wrote.
//!             out.push(
//!                 Invalid::new("min_idle", self.min_idle, "must not exceed max_idle")
//!                     .or(Invalid::new("max_idle", self.max_idle, "must not be below min_idle")),
//!             );
//!         }
//!         out
//!     }
//! }
//!
//! let err = Pool { min_idle: 5, max_idle: 2 }.validate().unwrap_err().within("pool");
//! assert_eq!(err.to_string(), "pool.min_idle = 5: must not exceed max_idle");
//! ```

#[cfg(feature = "toml")]
mod document;
mod secret;

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

#[cfg(feature = "toml")]
pub use document::{join, merge, suggest, Document, Entry, Located, Span, Value};
pub use secret::{expand_env, Secret};

/// A config value that cannot work: which key, its value, and why.
///
/// `Display` gives `key = value: reason` (or `key: reason` when the reason itself names
/// the value), the form every config error of agentgate takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The key, relative to the struct that found the problem: `window`,
    /// `circuit_breaker.window`, `stages[1].fallback[0].agent`.
    pub key: String,
    /// The value as the program holds it (`10s`, `0`, `"x"`), shown when the key was not
    /// written (a default) or outside any file; `None` when `reason` already says it.
    pub value: Option<String>,
    /// What is wrong, e.g. `must be at least 1`.
    pub reason: String,
    /// The same problem blamed on another key, for pairs such as `base_delay` /
    /// `max_delay`: when only the other key is written, the error is about that one.
    pub or: Option<Box<Invalid>>,
}

/// A config struct that can tell every value of it that cannot work.
pub trait Validate {
    /// Every problem, not only the first, so that a loader can report the one that
    /// comes first in the file. Empty when the config can be used.
    fn problems(&self) -> Vec<Invalid>;

    /// The first of [`Validate::problems`], for constructors (`try_new`).
    fn validate(&self) -> Result<(), Invalid> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}

// === impl Invalid ===

impl Invalid {
    /// `key = value: reason`.
    pub fn new(
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            value: Some(value.to_string()),
            reason: reason.into(),
            or: None,
        }
    }

    /// `key: reason`, for a reason that names the value itself.
    pub fn named(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: None,
            reason: reason.into(),
            or: None,
        }
    }

    /// The same problem, told about `other` key when that one is the key to blame.
    pub fn or(mut self, other: Invalid) -> Self {
        self.or = Some(Box::new(other));
        self
    }

    /// Prefixes the key (and the other key of a pair) with the table holding it.
    pub fn within(mut self, table: &str) -> Self {
        self.key = format!("{table}.{}", self.key);
        self.or = self.or.map(|other| Box::new(other.within(table)));
        self
    }

    /// This problem, then each other key it may be blamed on, in order.
    pub fn blames(&self) -> impl Iterator<Item = &Invalid> {
        std::iter::successors(Some(self), |p| p.or.as_deref())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value}: {}", self.key, self.reason),
            None => write!(f, "{}: {}", self.key, self.reason),
        }
    }
}

impl std::error::Error for Invalid {}

// === serde helpers ===

/// `#[serde(deserialize_with = "agentgate_config::array_of_tables")]` for a `Vec` of
/// structs written as `[[key]]`: a value of another shape is reported as "expected an
/// array of tables" (the gateway adds the `[[…]]` header to write).
pub fn array_of_tables<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    seq(d, "an array of tables")
}

/// Deserializes a `Vec<T>`, saying `expecting` (e.g. an example of the array) when the
/// value is not an array.
pub fn seq<'de, D, T>(d: D, expecting: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Seq<T>(&'static str, PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Seq<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    d.deserialize_seq(Seq(expecting, PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "array_of_tables")]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Item {
        n: u32,
    }

    #[test]
    fn pairs_and_prefixes() {
        let p = Invalid::new("base_delay", "1m", "must not be longer than max_delay")
            .or(Invalid::new(
                "max_delay",
                "1s",
                "must not be shorter than base_delay (1m)",
            ))
            .within("retry");
        let keys: Vec<&str> = p.blames().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["retry.base_delay", "retry.max_delay"]);
        assert_eq!(
            p.to_string(),
            "retry.base_delay = 1m: must not be longer than max_delay"
        );
        assert_eq!(
            Invalid::named("stages", "a pipeline needs at least one stage").to_string(),
            "stages: a pipeline needs at least one stage"
        );
    }

    #[test]
    fn arrays_of_tables_say_what_they_expect() {
        let doc: Doc = toml::from_str("[[items]]\nn = 1\n[[items]]\nn = 2\n").unwrap();
        assert_eq!(doc.items.iter().map(|i| i.n).collect::<Vec<_>>(), [1, 2]);
        let err = toml::from_str::<Doc>("items = { n = 1 }").unwrap_err();
        assert!(
            err.message().ends_with("expected an array of tables"),
            "{}",
            err.message()
        );
    }
}
