#!/usr/bin/env bash
# Streamed-stage benchmark (SPEC §6): STREAMS concurrent streamed stages, CHUNKS_PER_SEC
# chunks per second each, every one watched by its own WebSocket client, against a
# streaming mock agent (SSE). The same load client first reads the agent directly (the
# floor), then runs the stages through agentgate. Reports chunk latency (agent writes →
# client parses) both ways, chunks lost or out of order, and the gateway's RSS.
# See benches/README.md and docs/BENCHMARKS.md.
#
#   benches/streams.sh                         # about 30 s after the build
#   STREAMS=200 CHUNKS=100 benches/streams.sh
#   knobs: STREAMS, CHUNKS (per stream), INTERVAL (between chunks), RAMP, NOFILE,
#          LOADGEN_CPU, SERVER_CPU, NO_BUILD=1, AGENTGATE_BIN (with NO_BUILD=1)
#
# Targets (issue 17): gateway p99 ≤ direct p99 + 5 ms, gateway RSS ≤ 150 MB, no chunk
# lost or reordered. Pinning: the load client on LOADGEN_CPU (0); the gateway and the
# mock agent on SERVER_CPU (1). Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

STREAMS=${STREAMS:-1000}
CHUNKS=${CHUNKS:-200}
INTERVAL=${INTERVAL:-50ms}
RAMP=${RAMP:-1s}
NOFILE=${NOFILE:-65536}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
LOADGEN=target/release/loadgen

BENCH_NAME=streams.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools taskset:util-linux curl:curl python3:python3
require_two_cpus

# Each stream is a socket in the load client, two in the gateway and one in the agent.
raise_nofile $((STREAMS * 3 + 1000)) "$STREAMS streams"

build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"

agent_port=$(free_port)
env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$agent_port" \
    --name llm --stream sse --stream-chunks "$CHUNKS" --stream-interval "$INTERVAL" \
    >"$TMP/llm.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$agent_port/_mock" "mock agent llm"

gw_port=$(free_port)
admin_port=$(free_port)
conf="$TMP/agentgate.toml"
cat >"$conf" <<CONF
[server]
listen = "127.0.0.1:$gw_port"
admin_listen = "127.0.0.1:$admin_port"
max_ws_connections = $((STREAMS + 1000))
shutdown_grace = "2s"

[agents.llm]
url = "http://127.0.0.1:$agent_port"
timeout = "10s"
stream_idle_timeout = "10s"
pool_max_idle_per_host = $STREAMS
[agents.llm.retry]
max_attempts = 1

[pipelines.default]
deadline = "5m"

[[pipelines.default.stages]]
name = "answer"
agent = "llm"
path = "/v1/chat"
stream_result = "concat"
CONF
"$BIN" check --config "$conf" >&2 || die "agentgate rejected the bench config"
taskset -c "$SERVER_CPU" "$BIN" run --config "$conf" >"$TMP/agentgate.log" 2>&1 &
gw_pid=$!
PIDS+=($gw_pid)
wait_http "http://127.0.0.1:$gw_port/readyz" "agentgate"

echo
echo "Streamed-stage benchmark: $(nproc --all) CPUs, $(uname -r); load client on CPU $LOADGEN_CPU, gateway + mock agent on CPU $SERVER_CPU"
echo "$STREAMS streams x $CHUNKS chunks, one every $INTERVAL (SSE); load average before: $(cut -d" " -f1-3 /proc/loadavg)"
status=0
taskset -c "$LOADGEN_CPU" "$LOADGEN" streams \
    --agent "http://127.0.0.1:$agent_port/v1/chat" --ws "ws://127.0.0.1:$gw_port/ws" \
    --streams "$STREAMS" --chunks "$CHUNKS" --ramp "$RAMP" --gateway-pid "$gw_pid" || status=$?
curl -fsS "http://127.0.0.1:$admin_port/api/orchestration/metrics" | python3 -c '
import json, sys
m = json.load(sys.stdin)
w, q = m["websocket"], m["queries"]
print("gateway /api/orchestration/metrics: websocket events_sent %s, events_dropped %s; queries completed %s, failed %s"
      % (w["events_sent"], w["events_dropped"], q["completed"], q["failed"]))
' || die "could not read the gateway metrics"
exit "$status"
