//! What the fuzz targets (`fuzz/`, cargo-fuzz on nightly) feed with arbitrary bytes:
//! everything that reads input an attacker or an operator writes. Each function takes
//! any bytes, must never panic, and checks what must hold of its answer.
//!
//! The logic lives here, in the library, so that it builds and runs on stable: the unit
//! tests below feed each function its seed corpus (`fuzz/corpus/TARGET/`) and every
//! crash the fuzzer ever found (kept there as well), so a crash once found stays a
//! regular regression test. `scripts/fuzz.sh TARGET SECONDS` runs a target on nightly.
//!
//! Targets: the config loader, a WebSocket client frame, `Retry-After`, the reverse
//! proxy's request target and headers, and the SSE/NDJSON chunk parser of streamed
//! stage answers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::ws::protocol;

/// A fuzz target: any bytes in, a panic when something that must hold does not.
pub type Target = fn(&[u8]);

/// The targets, by name: what `fuzz/fuzz_targets/{name}.rs` calls.
pub const TARGETS: [(&str, Target); 5] = [
    ("config", config),
    ("ws_frame", ws_frame),
    ("retry_after", retry_after),
    ("proxy_request", proxy_request),
    ("stream_chunks", stream_chunks),
];

/// The config loader: any text is a config or one `file:line:col: message`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(config) => {
            assert!(!config.agents.is_empty(), "a valid config has an agent");
            let _ = config.summary();
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
            assert!(!e.message.is_empty());
            // Positions point into the document.
            let lines = text.split('\n').count().max(1);
            assert!(e.line <= lines + 1, "line {} of {lines}: {shown}", e.line);
        }
    }
}

/// A client's WebSocket text frame: a frame, or an error frame that is JSON.
pub fn ws_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = protocol::parse(text) {
        let json: serde_json::Value =
            serde_json::from_str(&e.to_json()).expect("error frames are JSON");
        assert_eq!(json["type"], "error");
    }
}

/// `Retry-After` as an agent sends it: seconds or an HTTP date, never negative,
/// never a panic on overflow.
pub fn retry_after(data: &[u8]) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = agentgate_classify::parse_retry_after(text, now);
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let headers = HeaderMap::from_iter([(http::header::RETRY_AFTER, value)]);
        let _ = agentgate_classify::retry_after_from_headers(&headers, now);
    }
}

/// The reverse proxy's handling of a request target and headers: the first line of
/// `data` is the target, each further line a `name: value` header. A target it accepts
/// never steps out of the agent's base path, and no hop-by-hop header goes on.
pub fn proxy_request(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(Ok(uri)) = lines.next().map(http::Uri::try_from) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if let Ok((_agent, path_and_query)) = crate::routes::proxy::prepare(&uri, &mut headers, peer) {
        assert!(path_and_query.as_str().starts_with('/'), "{path_and_query}");
        for segment in path_and_query.path().split('/') {
            assert!(segment != "." && segment != "..", "{path_and_query}");
        }
        for hop in [
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!headers.contains_key(hop), "{hop} went on");
        }
        assert!(headers.contains_key("x-forwarded-for"));
    }
}

/// A streamed stage answer (SPEC §6, SSE or NDJSON) as an agent may send it: the
/// first byte picks the format and the limit per line or event (1…128 bytes), the
/// second how the rest is cut into body frames (1…16 bytes each). Reading it ends, with
/// chunks no longer than the limit, or with an error.
pub fn stream_chunks(data: &[u8]) {
    use agentgate_agent_client::{ChunkStream, StreamFormat};
    use futures_util::stream;
    use http_body_util::StreamBody;

    let [head, cut, rest @ ..] = data else {
        return;
    };
    let format = if head & 1 == 0 {
        StreamFormat::Sse
    } else {
        StreamFormat::Ndjson
    };
    let max = usize::from(head >> 1) + 1;
    let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = rest
        .chunks(usize::from(cut % 16) + 1)
        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(stream::iter(frames));
    let mut chunks = ChunkStream::new(format, body, Duration::from_secs(60)).max_bytes(max);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            // Each chunk takes at least one byte of input: more reads than bytes is a loop.
            for _ in 0..=rest.len() + 1 {
                match chunks.next_chunk().await {
                    Ok(Some(chunk)) => assert!(chunk.len() <= max, "{} > {max}", chunk.len()),
                    Ok(None) | Err(_) => return,
                }
            }
            panic!("the stream never ended");
        });
    });
}

thread_local! {
    /// One runtime per fuzzing thread: building one per input would dominate.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `fuzz/corpus/{target}/`: the seeds and every crash ever found.
    #[test]
    fn the_corpus_and_every_crash_found_run_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut files = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(run.is_ok(), "{name}: {path:?} panics");
                files += 1;
            }
            assert!(files > 0, "{name} has no seeds");
        }
    }

    #[test]
    fn the_checks_can_fail() {
        // A target that accepted a path out of the agent would trip its assertion: the
        // proxy refuses such a target before the check is reached.
        for escape in [
            "/agents/a/../../etc",
            "/agents/a/%2e%2e/x",
            "/agents/a/x%2F..%2Fy",
        ] {
            let uri: http::Uri = escape.parse().unwrap();
            let mut headers = HeaderMap::new();
            assert!(
                crate::routes::proxy::prepare(&uri, &mut headers, None).is_err(),
                "{escape}"
            );
        }
        let refused = std::panic::catch_unwind(|| config(b"[agents.a]\nurl = 5\n"));
        assert!(refused.is_ok());
    }
}
