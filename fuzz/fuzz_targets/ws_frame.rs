//! `cargo +nightly fuzz run ws_frame`: see `agentgate_gateway::fuzz::ws_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentgate_gateway::fuzz::ws_frame(data));
