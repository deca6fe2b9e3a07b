use std::error::Error;

/// Returns `true` when `err`, or any error in its `source()` chain, is an `E`.
///
/// Layers wrap errors in each other (retry around breaker around timeout), so callers
/// must never depend on nesting order: ask "was this caused by a timeout?" instead.
///
/// ```
/// use agentgate_classify::is_caused_by;
/// let err: agentgate_classify::BoxError = Box::new(std::io::Error::other("boom"));
/// assert!(is_caused_by::<std::io::Error>(&*err));
/// assert!(!is_caused_by::<std::fmt::Error>(&*err));
/// ```
pub fn is_caused_by<E: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    cause_ref::<E>(err).is_some()
}

/// The first error of type `E` in `err`'s `source()` chain (starting with `err` itself,
/// and looking inside `std::io::Error`s that wrap another error).
pub fn cause_ref<'a, E: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = next_cause(e);
    }
    None
}

/// The next error in the chain. `std::io::Error` hides the error it wraps from
/// `source()` (it returns the wrapped error's source), so look inside it explicitly.
pub(crate) fn next_cause<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            return Some(inner);
        }
    }
    err.source()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(Box<dyn Error + Send + Sync>);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn finds_cause_at_any_depth() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Outer(Box::new(Outer(Box::new(inner))));
        let found = cause_ref::<std::io::Error>(&err).expect("io error in chain");
        assert_eq!(found.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(is_caused_by::<Outer>(&err));
        assert!(!is_caused_by::<fmt::Error>(&err));
    }
}
