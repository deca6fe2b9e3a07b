//! `cargo +nightly fuzz run proxy_request`: see `agentgate_gateway::fuzz::proxy_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentgate_gateway::fuzz::proxy_request(data));
