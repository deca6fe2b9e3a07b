#!/usr/bin/env bash
# WebSocket fan-out benchmark: 10,000 concurrent WebSocket clients (benches/loadgen
# ws-fanout), each following a steady stream of queries' events, against agentgate with
# three mock agents. Reports delivery latency, seq gaps, lagged notices and the gateway's
# memory. See benches/README.md and docs/BENCHMARKS.md.
#
#   benches/ws_fanout.sh                               # about 70 s after the build
#   SCENARIOS=groups CLIENTS=2000 benches/ws_fanout.sh
#   knobs: CLIENTS, GROUP_SIZE, INTERVAL, WARMUP, DURATION, STAGE_LATENCY, STAGE_JITTER,
#          SCENARIOS ("groups broadcast"), NOFILE, LOADGEN_CPU, SERVER_CPU, NO_BUILD=1,
#          AGENTGATE_BIN (another agentgate binary, e.g. a patched build, with NO_BUILD=1),
#          TIMELINE=1 (also print latency and CPU per second)
#
# Scenarios (each against a freshly started gateway, so its peak RSS is its own):
#   groups:    the clients in groups of GROUP_SIZE (1000); every group gets a new query
#              every INTERVAL (1 s), so 10 queries/s, each watched by 1000 clients;
#   broadcast: every client watches every query; one query every INTERVAL.
# Both give every client the same stream (7 events per second with the defaults) and the
# gateway the same number of deliveries; broadcast sends them in bursts of 10,000.
#
# Pinning: the load client on LOADGEN_CPU (0); the gateway and the mock agents on
# SERVER_CPU (1). Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-10000}
GROUP_SIZE=${GROUP_SIZE:-1000}
INTERVAL=${INTERVAL:-1s}
WARMUP=${WARMUP:-5s}
DURATION=${DURATION:-20s}
STAGE_LATENCY=${STAGE_LATENCY:-300ms}
STAGE_JITTER=${STAGE_JITTER:-200ms}
SCENARIOS=${SCENARIOS:-groups broadcast}
NOFILE=${NOFILE:-65536}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
LOADGEN=target/release/loadgen

BENCH_NAME=ws_fanout.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools taskset:util-linux curl:curl python3:python3
require_two_cpus

# Each client is one socket in the load client and one in the gateway.
raise_nofile $((CLIENTS + 1000)) "$CLIENTS clients"
ports=$(awk '{print $2 - $1}' /proc/sys/net/ipv4/ip_local_port_range)
[ "$ports" -gt "$CLIENTS" ] || die "only $ports local ports (net.ipv4.ip_local_port_range) for $CLIENTS clients"

build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"

# Stops one process this script started and forgets it (so cleanup cannot hit a reused PID).
stop_pid() {
    local pid=$1 i keep=()
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in "${PIDS[@]}"; do [ "$i" = "$pid" ] || keep+=("$i"); done
    PIDS=("${keep[@]}")
}

# --- three mock agents, each answering after STAGE_LATENCY + up to STAGE_JITTER ---------------
declare -A PORT
for agent in nlp data viz; do
    PORT[$agent]=$(free_port)
    env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:${PORT[$agent]}" \
        --name "$agent" --latency "$STAGE_LATENCY" --latency-jitter "$STAGE_JITTER" >"$TMP/$agent.log" 2>&1 &
    PIDS+=($!)
done
for agent in nlp data viz; do wait_http "http://127.0.0.1:${PORT[$agent]}/_mock" "mock agent $agent"; done

# run_scenario name group_size: a fresh gateway, the load client, the gateway's own figures.
run_scenario() {
    local name=$1 group=$2 gw_port admin_port gw_pid conf
    gw_port=$(free_port)
    admin_port=$(free_port)
    conf="$TMP/agentgate-$name.toml"
    cat >"$conf" <<CONF
[server]
listen = "127.0.0.1:$gw_port"
admin_listen = "127.0.0.1:$admin_port"
max_ws_connections = $((CLIENTS + 1000))
shutdown_grace = "2s"

$(three_stage_toml)
CONF
    "$BIN" check --config "$conf" >&2 || die "agentgate rejected the bench config"
    taskset -c "$SERVER_CPU" "$BIN" run --config "$conf" >"$TMP/agentgate-$name.log" 2>&1 &
    gw_pid=$!
    PIDS+=($gw_pid)
    wait_http "http://127.0.0.1:$gw_port/readyz" "agentgate"

    echo
    echo "### $name: $CLIENTS clients, $([ "$group" -ge "$CLIENTS" ] && echo "all on every query" || echo "groups of $group"), a new query per group every $INTERVAL"
    echo "load average before the run: $(cut -d" " -f1-3 /proc/loadavg)"
    echo
    log "$name: connecting $CLIENTS WebSocket clients, then $WARMUP warm-up + $DURATION measured"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" ws-fanout \
        --ws "ws://127.0.0.1:$gw_port/ws" --api "http://127.0.0.1:$gw_port" \
        --clients "$CLIENTS" --group-size "$group" --interval "$INTERVAL" \
        --warmup "$WARMUP" --duration "$DURATION" --gateway-pid "$gw_pid" \
        ${TIMELINE:+--timeline} ||
        die "$name: the load client failed (gateway log: $TMP/agentgate-$name.log)"
    # The gateway's own view: every event it sent, none dropped.
    curl -fsS "http://127.0.0.1:$admin_port/api/orchestration/metrics" | python3 -c '
import json, sys
m = json.load(sys.stdin)
w, q = m["websocket"], m["queries"]
print("gateway /api/orchestration/metrics: websocket events_sent %s, events_dropped %s; queries total %s, completed %s, failed %s"
      % (w["events_sent"], w["events_dropped"], q["total"], q["completed"], q["failed"]))
' || die "$name: could not read the gateway metrics"
    stop_pid "$gw_pid"
}

echo
echo "WebSocket fan-out benchmark: $(nproc --all) CPUs, $(uname -r); load client on CPU $LOADGEN_CPU, gateway + 3 mock agents on CPU $SERVER_CPU"
echo "3-stage pipeline, each stage answering after $STAGE_LATENCY + up to $STAGE_JITTER; open-files limit $(ulimit -n)"
for scenario in $SCENARIOS; do
    case $scenario in
        groups) run_scenario groups "$GROUP_SIZE" ;;
        broadcast) run_scenario broadcast "$CLIENTS" ;;
        *) die "unknown scenario $scenario (groups, broadcast)" ;;
    esac
done
