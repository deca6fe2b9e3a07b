#!/usr/bin/env bash
# Pipeline benchmark: a 3-stage synchronous query through agentgate (POST /api/query) vs
# the same three agent calls made directly in sequence, one request at a time, against
# instant mock agents. See benches/README.md.
#
#   benches/pipeline.sh                          # about 20 s after the build (2 placements)
#   ITERATIONS=20000 WARMUP=2000 benches/pipeline.sh
#   knobs: ITERATIONS, WARMUP, BLOCKS, LOADGEN_CPU, SERVER_CPU, NO_BUILD=1
#
# Pinning: the client (benches/loadgen) on LOADGEN_CPU (0); the three mock agents and the
# gateway on SERVER_CPU (1); then once more with the client on SERVER_CPU too (see
# docs/BENCHMARKS.md for why). Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

ITERATIONS=${ITERATIONS:-10000}
WARMUP=${WARMUP:-1000}
BLOCKS=${BLOCKS:-10}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=target/release/agentgate
LOADGEN=target/release/loadgen

BENCH_NAME=pipeline.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools taskset:util-linux curl:curl python3:python3
require_two_cpus

build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"


# --- three instant mock agents -------------------------------------------------------------
declare -A PORT
for agent in nlp data viz; do
    PORT[$agent]=$(free_port)
    env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:${PORT[$agent]}" \
        --name "$agent" >"$TMP/$agent.log" 2>&1 &
    PIDS+=($!)
done

# --- the gateway: one 3-stage default pipeline ---------------------------------------------
GW_PORT=$(free_port)
GW_ADMIN_PORT=$(free_port)
cat >"$TMP/agentgate.toml" <<CONF
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$GW_ADMIN_PORT"

$(three_stage_toml)
CONF
"$BIN" check --config "$TMP/agentgate.toml" >&2 || die "agentgate rejected the bench config"
taskset -c "$SERVER_CPU" "$BIN" run --config "$TMP/agentgate.toml" >"$TMP/agentgate.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)

for agent in nlp data viz; do wait_http "http://127.0.0.1:${PORT[$agent]}/_mock" "mock agent $agent"; done
wait_http "http://127.0.0.1:$GW_PORT/readyz" "agentgate"

run_loadgen() { # cpu
    taskset -c "$1" "$LOADGEN" \
        --gateway "http://127.0.0.1:$GW_PORT" \
        --stage "nlp_processing=http://127.0.0.1:${PORT[nlp]}/process" \
        --stage "data_retrieval=http://127.0.0.1:${PORT[data]}/query" \
        --stage "visualization=http://127.0.0.1:${PORT[viz]}/render" \
        --warmup "$WARMUP" --iterations "$ITERATIONS" --blocks "$BLOCKS"
}

log "loadgen: $WARMUP warm-up + $ITERATIONS measured per mode, $BLOCKS alternating blocks, twice"
echo
echo "pipeline benchmark: 3 stages, concurrency 1, $(nproc --all) CPUs, $(uname -r), load average before the run: $(cut -d" " -f1-3 /proc/loadavg)"
echo
echo "### A. split (the reference): client on CPU $LOADGEN_CPU; gateway + 3 mock agents on CPU $SERVER_CPU"
echo
run_loadgen "$LOADGEN_CPU"
echo
echo "### B. shared: client, gateway and 3 mock agents all on CPU $SERVER_CPU"
echo "(no cross-CPU wake-ups: the direct path is no longer charged 3 of them per query vs 1 for the gateway)"
echo
run_loadgen "$SERVER_CPU"
echo
# Every query stays retained (records and replay buffers) up to query_retention / the
# count caps, so this is the memory of ~2 x (WARMUP + ITERATIONS) retained queries.
echo "gateway memory after the runs: $(grep VmRSS /proc/$GW_PID/status | tr -s ' ')"
