#!/usr/bin/env bash
# The Redis progress backend's cost per query (SPEC §9 target: at most 10% more gateway
# CPU than the memory backend at 500 queries/s): two gateways in the same run, one with
# `backend = "memory"`, one with `backend = "redis"`, each with a one-stage pipeline to
# the same fault-free mock agent, loaded in turn (ROUNDS times, alternating) with
# `POST /api/query` at a fixed offered rate by `loadgen open-loop`. Reports each one's
# CPU per query (from /proc, while measured), latency from when each query was due, and
# redis-server's own CPU per query. See benches/README.md.
#
#   benches/redis_cost.sh                    # about 80 s after the build
#   RATE=1000 ROUNDS=2 benches/redis_cost.sh
#   knobs: RATE (500), DURATION (10s), WARMUP (2s), CONNECTIONS (16), ROUNDS (3),
#          LOADGEN_CPU, SERVER_CPU, NO_BUILD=1, AGENTGATE_BIN (with NO_BUILD=1)
#
# Pinning: loadgen (which spins: it never sleeps between requests) on LOADGEN_CPU (0);
# both gateways, the mock agent and redis-server on SERVER_CPU (1). Prints figures only.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-500}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-3}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
LOADGEN=target/release/loadgen

BENCH_NAME=redis_cost.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools redis-server:redis-server taskset:util-linux curl:curl python3:python3
require_two_cpus
build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"

REDIS_PORT=$(free_port)
AGENT_PORT=$(free_port)
taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=($REDIS_PID)
env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$AGENT_PORT" \
    --name echo >"$TMP/agent.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$AGENT_PORT/_mock" "the mock agent"

declare -A PORT GW_PID
for backend in memory redis; do
    PORT[$backend]=$(free_port)
    cat >"$TMP/$backend.toml" <<CONF
[server]
listen = "127.0.0.1:${PORT[$backend]}"
admin_listen = "127.0.0.1:$(free_port)"

[progress]
backend = "$backend"
redis_url = "redis://127.0.0.1:$REDIS_PORT"

[agents.echo]
url = "http://127.0.0.1:$AGENT_PORT"

[pipelines.default]
[[pipelines.default.stages]]
name = "answer"
agent = "echo"
path = "/process"
CONF
    "$BIN" check --config "$TMP/$backend.toml" >&2 || die "agentgate rejected the $backend config"
    env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" run --config "$TMP/$backend.toml" \
        >"$TMP/$backend.log" 2>&1 &
    GW_PID[$backend]=$!
    PIDS+=($!)
    wait_http "http://127.0.0.1:${PORT[$backend]}/healthz" "the $backend gateway"
done
for i in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:${PORT[redis]}/readyz" 2>/dev/null | grep -q '"redis":"connected"' && break
    [ "$i" = 100 ] && die "the redis gateway did not connect to redis"
    sleep 0.1
done

run_open() { # backend
    local out
    out=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" open-loop --label "$1" \
        --url "http://127.0.0.1:${PORT[$1]}/api/query" --body '{"query":"benchmark query"}' \
        --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
        --server-pid "${GW_PID[$1]}" --other-pid "$REDIS_PID") || die "$1: the load client failed"
    log "$(grep -v '^RESULT' <<<"$out")"
    echo "$(grep '^RESULT' <<<"$out") round=$ROUND" >>"$TMP/results"
}

log "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
: >"$TMP/results"
for ROUND in $(seq 1 "$ROUNDS"); do
    run_open memory
    run_open redis
done
log "load average after: $(cut -d" " -f1-3 /proc/loadavg)"

python3 - "$TMP/results" "$RATE" <<'PY'
import statistics, sys
rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in open(sys.argv[1])]
def per_query_us(row, key):
    return float(row[key]) / float(row["achieved"]) * 1e6
print(f"| backend | gateway CPU per query (us) | redis-server CPU per query (us) | p50 (us) | p99 (us) | achieved q/s |")
print("|---|---|---|---|---|---|")
med = {}
for backend in ("memory", "redis"):
    rs = [r for r in rows if r["label"] == backend]
    cpu = statistics.median(per_query_us(r, "server_cpu") for r in rs)
    redis = statistics.median(per_query_us(r, "other_cpu") for r in rs)
    p50 = statistics.median(float(r["p50_us"]) for r in rs)
    p99 = statistics.median(float(r["p99_us"]) for r in rs)
    ach = statistics.median(float(r["achieved"]) for r in rs)
    med[backend] = (cpu, redis, p50, p99)
    print(f"| {backend} | {cpu:.0f} | {redis:.0f} | {p50:.0f} | {p99:.0f} | {ach:.0f} |")
m, r = med["memory"], med["redis"]
extra = (r[0] / m[0] - 1) * 100
print(f"\nredis backend at {sys.argv[2]} q/s: gateway CPU per query {extra:+.1f}% vs memory (target <= +10%); "
      f"with redis-server's own CPU {((r[0] + r[1]) / (m[0] + m[1]) - 1) * 100:+.1f}%; "
      f"p50 {r[2] - m[2]:+.0f} us, p99 {r[3] - m[3]:+.0f} us (medians of the rounds)")
print(f"RESULT gateway_cpu_extra_pct={extra:.1f} memory_cpu_us={m[0]:.0f} redis_cpu_us={r[0]:.0f} redis_server_cpu_us={r[1]:.0f}")
PY
