//! `cargo +nightly fuzz run config`: see `agentgate_gateway::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentgate_gateway::fuzz::config(data));
