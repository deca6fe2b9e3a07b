#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: scripts/fuzz.sh TARGET SECONDS
#
# Targets (fuzz/fuzz_targets/, their checks in crates/gateway/src/fuzz.rs): config,
# ws_frame, retry_after, proxy_request, stream_chunks. Needs a nightly toolchain (`cargo +nightly`);
# installs cargo-fuzz when it is missing. New interesting inputs go to
# target/fuzz-corpus/TARGET (the seeds in fuzz/corpus/TARGET are read, never written);
# a crash is saved under fuzz/artifacts/TARGET/ and the script fails: copy the file
# into fuzz/corpus/TARGET/ and it becomes a regular regression test (the gateway's
# unit tests run every file there on stable).
set -euo pipefail
cd "$(dirname "$0")/.."

targets="config ws_frame retry_after proxy_request stream_chunks"
usage="usage: scripts/fuzz.sh TARGET SECONDS (targets: $targets)"
target=${1:?$usage}
seconds=${2:?$usage}
case " $targets " in
*" $target "*) ;;
*) echo "$usage" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz $target: SKIPPED: no nightly toolchain (cargo +nightly); install one with 'rustup toolchain install nightly'"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

scratch="target/fuzz-corpus/$target"
mkdir -p "$scratch" "fuzz/artifacts/$target"
echo "fuzz $target: ${seconds}s"
# -rss_limit_mb: the gateway's allocations are small; a target that needs more leaks.
(cd fuzz && cargo +nightly fuzz run "$target" "../$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/")
