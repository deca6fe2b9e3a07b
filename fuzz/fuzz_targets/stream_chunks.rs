//! `cargo +nightly fuzz run stream_chunks`: see `agentgate_gateway::fuzz::stream_chunks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentgate_gateway::fuzz::stream_chunks(data));
