//! [`Secret`]: config values that are never shown, and `${VAR}` read from the
//! environment.

use std::cell::RefCell;
use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

/// A config value that must never be shown (SPEC §6: header values, keys): its `Debug`
/// prints `"***"`, its `Display` `***`, and it serializes as `"***"`, so a config
/// struct holding one can be logged, printed by `check` or put in a JSON answer without
/// leaking it. [`Secret::expose`] is the one way to the value: grep for it.
///
/// Deserializing a `Secret<String>` reads a string and replaces each `${VAR}` in it by
/// that environment variable (an unset one is an error naming it; `$$` is a literal
/// `$`). When the config is read by [`Document`](crate::Document), errors at the value
/// show it as `"***"` too.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret<T>(T);

// === impl Secret ===

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself: for the one place that uses it (sending a header).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = String::deserialize(d)?;
        record(&written);
        expand_env(&written, |name| std::env::var(name))
            .map(Secret)
            .map_err(serde::de::Error::custom)
    }
}

/// Replaces each `${NAME}` in `text` by `lookup(NAME)`; `$$` is a literal `$`, and a `$`
/// before anything else stays as it is. Errors name the variable, never a value.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                return Err("unterminated `${` (write `$${` for a literal `${`)".into());
            };
            let name = &tail[..end];
            let valid = name.chars().next().is_some_and(|c| !c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` must name an environment variable (ASCII letters, digits and `_`)"
                ));
            }
            match lookup(name) {
                Ok(value) => out.push_str(&value),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("environment variable `{name}` is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable `{name}` is not valid UTF-8"))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

thread_local! {
    /// The secrets, as written, deserialized while a [`recording`] runs on this thread.
    static WRITTEN: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn record(written: &str) {
    WRITTEN.with(|w| {
        if let Some(seen) = w.borrow_mut().as_mut() {
            seen.push(written.to_owned());
        }
    });
}

/// Runs `f`, returning with its result every secret (as written in the document) that
/// was deserialized meanwhile: [`Document`](crate::Document) shows those as `"***"`.
#[cfg(feature = "toml")]
pub(crate) fn recording<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let outer = WRITTEN.with(|w| w.borrow_mut().replace(Vec::new()));
    let out = f();
    let seen = WRITTEN.with(|w| std::mem::replace(&mut *w.borrow_mut(), outer));
    (out, seen.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env::VarError;

    fn env(name: &str) -> Result<String, VarError> {
        match name {
            "KEY" => Ok("s3cr3t".into()),
            "EMPTY" => Ok(String::new()),
            _ => Err(VarError::NotPresent),
        }
    }

    #[test]
    fn expands_variables_and_keeps_everything_else() {
        let cases = [
            ("Bearer ${KEY}", "Bearer s3cr3t"),
            ("${KEY}${KEY}", "s3cr3ts3cr3t"),
            ("a${EMPTY}b", "ab"),
            ("cost: $5, $$ {KEY} $${KEY}", "cost: $5, $ {KEY} ${KEY}"),
            ("trailing $", "trailing $"),
            ("no variables", "no variables"),
        ];
        for (text, want) in cases {
            assert_eq!(expand_env(text, env).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_name_the_variable_never_a_value() {
        let cases = [
            (
                "Bearer ${MISSING}",
                "environment variable `MISSING` is not set",
            ),
            (
                "${KEY",
                "unterminated `${` (write `$${` for a literal `${`)",
            ),
            (
                "${1X}",
                "`${1X}` must name an environment variable (ASCII letters, digits and `_`)",
            ),
            (
                "${}",
                "`${}` must name an environment variable (ASCII letters, digits and `_`)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(expand_env(text, env), Err(want.to_owned()), "{text}");
        }
    }

    #[test]
    fn never_shown() {
        let s = Secret::new("s3cr3t".to_owned());
        assert_eq!(
            format!("{s:?} {s} {:?}", Some(&s)),
            "\"***\" *** Some(\"***\")"
        );
        assert_eq!(s.expose(), "s3cr3t");
    }
}
