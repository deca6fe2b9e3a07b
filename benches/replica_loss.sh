#!/usr/bin/env bash
# Replica-loss detection (SPEC §9): three `agentgate run` replicas on one redis-server;
# each round kills one replica (SIGKILL) while a query of it waits on a slow agent and
# clients on the other two follow it over the WebSocket, and measures the time from the
# kill to the `failed` (`replica_lost`) event on each of them (`loadgen replica-loss`).
# Once for each lease in LEASES. See benches/README.md.
#
#   benches/replica_loss.sh                  # about 5 min after the build (20 kills at 10s, 20 at 2s)
#   KILLS=5 LEASES="2s" benches/replica_loss.sh
#   knobs: KILLS (20), LEASES ("10s 2s"), NO_BUILD=1, AGENTGATE_BIN (with NO_BUILD=1)
#
# Nothing is pinned: the time measured is the lease's expiry and the survivors' look,
# seconds, not CPU. Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

KILLS=${KILLS:-20}
LEASES=${LEASES:-"10s 2s"}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
LOADGEN=target/release/loadgen

BENCH_NAME=replica_loss.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools redis-server:redis-server curl:curl python3:python3
build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"

REDIS_PORT=$(free_port)
AGENT_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
# The agent never answers within a round: the queries are still running when killed.
env RUST_LOG=warn "$BIN" mock-agent --listen "127.0.0.1:$AGENT_PORT" --name slow --latency 10m \
    >"$TMP/agent.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$AGENT_PORT/_mock" "the mock agent"

log "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
: >"$TMP/results"
for lease in $LEASES; do
    mkdir -p "$TMP/lease-$lease"
    log "lease $lease: $KILLS kills"
    "$LOADGEN" replica-loss --agentgate "$BIN" --redis-port "$REDIS_PORT" \
        --agent "http://127.0.0.1:$AGENT_PORT" --lease "$lease" --kills "$KILLS" \
        --work-dir "$TMP/lease-$lease" | tee "$TMP/lease-$lease/out" >&2 ||
        die "lease $lease: the run failed (logs in $TMP/lease-$lease)"
    grep '^lease' "$TMP/lease-$lease/out" >>"$TMP/results"
done
log "load average after: $(cut -d" " -f1-3 /proc/loadavg)"
echo
cat "$TMP/results"
