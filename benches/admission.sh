#!/usr/bin/env bash
# Admission control and API keys under load (issue 20). Three parts, one run:
#
#  1. overload: the gateway (auth api_key, [server] max_running_queries = MAX_RUNNING) in
#     front of a mock agent that answers in 50 ms, so it sustains MAX_RUNNING / 50 ms
#     queries per second. `loadgen open-loop` POSTs /api/query at a quarter of that
#     (the unloaded baseline), then at OVERLOAD (2) times it for DURATION, printing the
#     gateway's RSS every RSS_EVERY. Every answer must be 200 (completed) or 503
#     `overloaded`: anything else, or a failed request, is an accepted query lost.
#     Targets: refusals p99 <= 5 ms; accepted p99 <= 1.5x the unloaded p99; RSS within
#     +-10% over the run once the retained stores are full (SETTLE, 10 s: 10,000 records
#     at 1,000 queries/s); nothing lost.
#  2. auth cost: two gateways on one fast mock agent, `mode = "none"` and
#     `mode = "api_key"` (with 20 clients configured), wrk at full speed on the reverse
#     proxy `/agents/echo/echo`, alternating AUTH_ROUNDS times. Target: api_key >= 0.97x.
#  3. memory (MEMORY=1 only, long): the chaos run of the issue — a faulty agent (errors,
#     so the breaker opens and most queries fail fast), RATE_MEMORY queries/s for
#     MEMORY_DURATION, RSS every 30 s.
#
#   benches/admission.sh                        # about 2 min after the build
#   MEMORY=1 MEMORY_DURATION=600s benches/admission.sh
#   PARTS=memory MEMORY_DURATION=240s benches/admission.sh   # one part alone
#   knobs: PARTS ("overload auth"; MEMORY=1 adds memory), MAX_RUNNING (50), OVERLOAD (2), DURATION (60s), RSS_EVERY (10s), CONNECTIONS (512),
#          AUTH_ROUNDS (5), WRK_DURATION (5s), WRK_CONNECTIONS (16), RATE_MEMORY (1300),
#          LOADGEN_CPU (0), SERVER_CPU (1), NO_BUILD=1
#
# Pinning: the load client on LOADGEN_CPU, the gateway and the mock agent on SERVER_CPU.
# Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_RUNNING=${MAX_RUNNING:-50}
OVERLOAD=${OVERLOAD:-2}
DURATION=${DURATION:-60s}
RSS_EVERY=${RSS_EVERY:-10s}
SETTLE=${SETTLE:-10}
CONNECTIONS=${CONNECTIONS:-512}
AUTH_ROUNDS=${AUTH_ROUNDS:-5}
WRK_DURATION=${WRK_DURATION:-5s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-16}
MEMORY=${MEMORY:-0}
PARTS=${PARTS:-overload auth}
[ "$MEMORY" = 1 ] && PARTS="$PARTS memory"
has() { [[ " $PARTS " == *" $1 "* ]]; }
MEMORY_DURATION=${MEMORY_DURATION:-600s}
RATE_MEMORY=${RATE_MEMORY:-1300}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=target/release/agentgate
LOADGEN=target/release/loadgen
AGENT_LATENCY_MS=50

BENCH_NAME=admission.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools wrk:wrk taskset:util-linux curl:curl python3:python3
require_two_cpus
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"

KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export AGENTGATE_BENCH_KEY=$KEY

mock() { # port latency extra-args...: a mock agent on SERVER_CPU
    local port=$1 latency=$2
    shift 2
    env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$port" \
        --name echo --latency "$latency" "$@" >"$TMP/mock-$port.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$port/echo" "the mock agent on $port"
}

gateway() { # name toml: starts it on SERVER_CPU, sets GW_PID
    "$BIN" check --config "$2" >&2 || die "agentgate rejected $2"
    env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" run --config "$2" >"$TMP/$1.log" 2>&1 &
    GW_PID=$!
    PIDS+=($GW_PID)
}

auth_toml() { # mode clients: [auth] with `clients` filler clients and the bench's own
    echo "[auth]"
    echo "mode = \"$1\""
    local i
    for i in $(seq 1 "$2"); do
        printf '[[auth.clients]]\nname = "filler-%d"\nkey_sha256 = "%064x"\n' "$i" "$i"
    done
    printf '[[auth.clients]]\nname = "bench"\nkey_env = "AGENTGATE_BENCH_KEY"\n'
}

pipeline_toml() { # agent-port: one stage on a 1-attempt agent
    cat <<TOML
[agents.echo]
url = "http://127.0.0.1:$1"
timeout = "5s"
[agents.echo.retry]
max_attempts = 1
[pipelines.default]
deadline = "10s"
[[pipelines.default.stages]]
name = "answer"
agent = "echo"
path = "/echo"
TOML
}

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
CAPACITY=$((MAX_RUNNING * 1000 / AGENT_LATENCY_MS))
open_loop() { # label rate duration statuses... (extra flags via EXTRA)
    local label=$1 rate=$2 duration=$3
    shift 3
    local statuses=()
    for s in "$@"; do statuses+=(--expect-status "$s"); done
    taskset -c "$LOADGEN_CPU" "$LOADGEN" open-loop --label "$label" --url "$QUERY_URL" \
        --body '{"query":"bench"}' --header "x-api-key: $KEY" "${statuses[@]}" \
        --rate "$rate" --duration "$duration" --warmup 2s --connections "$CONNECTIONS" \
        --server-pid "$GW_PID" ${EXTRA:-} || die "$label: the load client failed (an unexpected answer is a lost query)"
}


if has overload; then
    AGENT=$(free_port)
    GW=$(free_port)
    GW_ADMIN=$(free_port)
    mock "$AGENT" "${AGENT_LATENCY_MS}ms"
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nmax_running_queries = %s\n' \
            "$GW" "$GW_ADMIN" "$MAX_RUNNING"
        auth_toml api_key 0
        pipeline_toml "$AGENT"
    } >"$TMP/overload.toml"
    gateway overload "$TMP/overload.toml"
    wait_http "http://127.0.0.1:$GW/healthz" "agentgate"

    QUERY_URL="http://127.0.0.1:$GW/api/query"

    log "unloaded: $((CAPACITY / 4)) queries/s (capacity $CAPACITY/s)"
    UNLOADED=$(open_loop unloaded $((CAPACITY / 4)) 10s 200)
    log "$UNLOADED"
    log "overload: $((CAPACITY * OVERLOAD)) queries/s for $DURATION"
    OVER=$(EXTRA="--rss-every $RSS_EVERY" open_loop overload $((CAPACITY * OVERLOAD)) "$DURATION" 200 503)
    log "$OVER"

fi

# --- 2. auth cost on the proxy path -----------------------------------------------------
if has auth; then
    FAST=$(free_port)
    mock "$FAST" 0ms
    declare -A GW_PORT
    for mode in none api_key; do
        GW_PORT[$mode]=$(free_port)
        {
            printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "${GW_PORT[$mode]}" "$(free_port)"
            auth_toml "$mode" 20
            printf '[agents.echo]\nurl = "http://127.0.0.1:%s"\n[agents.echo.retry]\nmax_attempts = 1\n' "$FAST"
        } >"$TMP/auth-$mode.toml"
        gateway "auth-$mode" "$TMP/auth-$mode.toml"
        wait_http "http://127.0.0.1:${GW_PORT[$mode]}/healthz" "agentgate ($mode)"
    done
    : >"$TMP/wrk"
    for round in $(seq 1 "$AUTH_ROUNDS"); do
        for mode in none api_key; do
            out=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency \
                -H "x-api-key: $KEY" "http://127.0.0.1:${GW_PORT[$mode]}/agents/echo/echo")
            grep -q 'Non-2xx' <<<"$out" && { echo "$out" >&2; die "auth $mode: non-2xx answers"; }
            rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
            log "auth round $round $mode: $rps req/s"
            echo "$round $mode $rps" >>"$TMP/wrk"
        done
    done

fi

# --- 3. memory over time (MEMORY=1) -----------------------------------------------------
MEMORY_OUT=""
if has memory; then
    CHAOS=$(free_port)
    GW=$(free_port)
    mock "$CHAOS" 20ms --error-rate 0.6 --hang-rate 0.01
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$GW" "$(free_port)"
        auth_toml api_key 0
        printf '[defaults.circuit_breaker]\nconsecutive_failures = 5\nopen_duration = "2s"\n'
        pipeline_toml "$CHAOS" | sed 's/timeout = "5s"/timeout = "200ms"/'
    } >"$TMP/memory.toml"
    gateway memory "$TMP/memory.toml"
    wait_http "http://127.0.0.1:$GW/healthz" "agentgate (memory)"
    QUERY_URL="http://127.0.0.1:$GW/api/query"
    log "memory: $RATE_MEMORY queries/s for $MEMORY_DURATION against a faulty agent"
    MEMORY_OUT=$(EXTRA="--rss-every 30s" open_loop memory "$RATE_MEMORY" "$MEMORY_DURATION" 200 502 503 504)
fi

# --- report -----------------------------------------------------------------------------
kv() { # line key
    tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'
}
result() { # output label [status]
    grep '^RESULT' <<<"$1" | grep "label=$2 " | { if [ -n "${3:-}" ]; then grep "status=$3 "; else grep -v status=; fi; }
}
echo
echo "admission benchmark: $(nproc --all) CPUs, $(uname -r); load client on CPU $LOADGEN_CPU, gateway + mock agents on CPU $SERVER_CPU"
echo "load average before the run: $LOAD0"
echo "agent answers in ${AGENT_LATENCY_MS} ms; max_running_queries = $MAX_RUNNING: capacity $CAPACITY queries/s"
echo
if has overload; then
    base=$(result "$UNLOADED" unloaded)
    acc=$(result "$OVER" overload 200)
    ref=$(result "$OVER" overload 503)
    # Judged on the latency from when each request was sent: the gateway's answer time.
    # From when it was due adds the load client's own dispatch lag (shown too).
    base_p99=$(kv "$base" sent_p99_us)
    acc_p99=$(kv "$acc" sent_p99_us)
    ref_p99=$(kv "$ref" sent_p99_us)
    rss=$(grep '^RSS summary' <<<"$OVER")
    # The spread once the stores are full: samples from SETTLE seconds on.
    spread=$(grep '^RSS t=' <<<"$OVER" | sed -E 's/RSS t=([0-9]+)s rss_mb=([0-9.]+)/\1 \2/' |
        awk -v settle="$SETTLE" '$1 >= settle { if (n == 0 || $2 < lo) lo = $2; if (n == 0 || $2 > hi) hi = $2; n++ }
            END { printf "%.1f", n ? (hi - lo) / lo * 100 : 0 }')
    ratio=$(awk -v a="$acc_p99" -v b="$base_p99" 'BEGIN {printf "%.2f", a / b}')
    row() { # phase offered answers line
        awk -v p="$1" -v o="$2" -v st="$3" -v l="$4" 'BEGIN { split(l, a, " "); for (i in a) { split(a[i], kv, "="); v[kv[1]] = kv[2] }
            n = v["n"]; r = (v["rate"] != "" ? v["rate"] : v["achieved"])
            printf "| %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f |\n", p, o, st, n, r, v["sent_p50_us"] / 1000, v["sent_p99_us"] / 1000, v["p50_us"] / 1000, v["p99_us"] / 1000 }'
    }
    echo "| phase | offered/s | answers | n | rate/s | p50 from sent (ms) | p99 from sent (ms) | p50 from due (ms) | p99 from due (ms) |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    row unloaded $((CAPACITY / 4)) 200 "$base"
    row overload $((CAPACITY * OVERLOAD)) 200 "$acc"
    row overload $((CAPACITY * OVERLOAD)) "503 overloaded" "$ref"
    all=$(result "$OVER" overload)
    echo "load client dispatch lag p99: unloaded $(kv "$base" lag_p99_us) us, overload $(kv "$all" lag_p99_us) us;" \
        "overload: gateway CPU $(kv "$all" server_cpu), gateway waiting for its CPU $(kv "$all" server_wait), loadgen waiting $(kv "$all" loadgen_wait)"
    echo
    grep '^RSS t=' <<<"$OVER" | sed 's/^/  /'
    echo "  $rss"
    echo
    awk -v r="$ref_p99" -v ratio="$ratio" -v s="$spread" -v settle="$SETTLE" 'BEGIN {
        printf "targets:\n"
        printf "  refusals (503 overloaded) p99 %.2f ms <= 5 ms: %s\n", r / 1000, (r <= 5000 ? "met" : "MISSED")
        printf "  accepted p99 %.2fx the unloaded p99 <= 1.5x: %s\n", ratio, (ratio <= 1.5 ? "met" : "MISSED")
        printf "  RSS spread from t=%ss on %.1f%% <= 10%%: %s\n", settle, s, (s <= 10 ? "met" : "MISSED")
        printf "  accepted queries lost: 0 (the load client fails on any answer but 200 or 503, or a failed request): met\n"
    }'
fi
if has auth; then
    echo
    echo "auth cost on the reverse proxy (wrk -t1 -c$WRK_CONNECTIONS -d$WRK_DURATION, GET /agents/echo/echo, 20 filler clients + the bench's):"
    awk '{ rps[$1, $2] = $3; rounds[$1] = 1 }
    END {
        printf "| round | none req/s | api_key req/s | api_key / none |\n|---:|---:|---:|---:|\n"
        n = 0
        for (R = 1; (R in rounds); R++) { q = rps[R, "api_key"] / rps[R, "none"]; r[++n] = q
            printf "| %d | %.0f | %.0f | %.3f |\n", R, rps[R, "none"], rps[R, "api_key"], q }
        # median of the ratios
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
        m = r[int((n + 1) / 2)]
        printf "target api_key >= 0.97x none (median of rounds %.3f): %s\n", m, (m >= 0.97 ? "met" : "MISSED")
    }' "$TMP/wrk"
fi
if [ -n "$MEMORY_OUT" ]; then
    echo
    echo "memory: $RATE_MEMORY queries/s for $MEMORY_DURATION, agent with 60% errors and 1% hangs (breaker opens; most queries fail fast):"
    grep -v '^RESULT' <<<"$MEMORY_OUT" | sed 's/^/  /'
fi
