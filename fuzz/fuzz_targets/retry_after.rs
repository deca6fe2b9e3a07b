//! `cargo +nightly fuzz run retry_after`: see `agentgate_gateway::fuzz::retry_after`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentgate_gateway::fuzz::retry_after(data));
