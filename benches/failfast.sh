#!/usr/bin/env bash
# Open-breaker fail-fast benchmark: the `echo` agent's breaker is forced open through the
# admin API, then `/agents/echo/echo` (answered 503 circuit_open without calling the
# agent) is loaded at a fixed offered rate with benches/loadgen open-loop, next to two
# baselines in the same run: the gateway's `/healthz` and the mock agent called directly.
# Then the same three with wrk at full speed (closed loop). See benches/README.md.
#
#   benches/failfast.sh                      # about 110 s after the build (2 rounds)
#   RATE=30000 ROUNDS=1 benches/failfast.sh
#   knobs: RATE (20000), DURATION (10s), WARMUP (2s), CONNECTIONS (32), ROUNDS (2),
#          WRK_DURATION (5s), WRK_CONNECTIONS (16), LOADGEN_CPU, SERVER_CPU, NO_BUILD=1,
#          AGENTGATE_BIN (another agentgate binary, with NO_BUILD=1)
#
# Pinning: the load client (loadgen or wrk) on LOADGEN_CPU (0); the gateway and the mock
# agent on SERVER_CPU (1). Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-20000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-2}
WRK_DURATION=${WRK_DURATION:-5s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-16}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
LOADGEN=target/release/loadgen

BENCH_NAME=failfast.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools wrk:wrk taskset:util-linux curl:curl python3:python3
require_two_cpus

build_release -p agentgate-bin -p agentgate-loadgen
require_exec "$BIN" "$LOADGEN"

BACKEND_PORT=$(free_port)
GW_PORT=$(free_port)
GW_ADMIN_PORT=$(free_port)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

# --- the fault-free mock agent and the gateway ----------------------------------------------
env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$BACKEND_PORT" --name echo \
    >"$TMP/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=($BACKEND_PID)

cat >"$TMP/agentgate.toml" <<CONF
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$GW_ADMIN_PORT"

[admin]
token_env = "AGENTGATE_BENCH_ADMIN_TOKEN"

[agents.echo]
url = "http://127.0.0.1:$BACKEND_PORT"
CONF
"$BIN" check --config "$TMP/agentgate.toml" >&2 || die "agentgate rejected the bench config"
env AGENTGATE_BENCH_ADMIN_TOKEN="$TOKEN" taskset -c "$SERVER_CPU" "$BIN" run --config "$TMP/agentgate.toml" \
    >"$TMP/agentgate.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)

DIRECT_URL="http://127.0.0.1:$BACKEND_PORT/echo"
HEALTH_URL="http://127.0.0.1:$GW_PORT/healthz"
OPEN_URL="http://127.0.0.1:$GW_PORT/agents/echo/echo"
ADMIN="http://127.0.0.1:$GW_ADMIN_PORT/api/orchestration/circuit-breakers"
wait_http "$DIRECT_URL" "the mock agent"
wait_http "$HEALTH_URL" "agentgate"
wait_http "$OPEN_URL" "agentgate's /agents/echo route (breaker closed)"

# --- force the breaker open (10 minutes, far longer than the run) ---------------------------
answer=$(curl -sS -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    --data '{"for":"10m"}' "$ADMIN/echo/force-open") || die "force-open request failed"
python3 -c 'import json, sys; a = json.loads(sys.argv[1]); sys.exit(a.get("to") != "forced_open")' "$answer" ||
    die "force-open did not answer to=forced_open: $answer"
log "force-open: $answer"
code=$(curl -sS -o "$TMP/open.json" -w '%{http_code}' "$OPEN_URL")
[ "$code" = 503 ] || die "GET $OPEN_URL with the breaker forced open answered $code (want 503)"
grep -q '"circuit_open"' "$TMP/open.json" || die "the 503 is not circuit_open: $(cat "$TMP/open.json")"
log "GET $OPEN_URL -> 503 $(cat "$TMP/open.json")"

agent_requests() {
    curl -fsS "http://127.0.0.1:$BACKEND_PORT/_mock" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["stats"]["requests"])'
}

# An open breaker must answer without calling the agent.
check_agent_untouched() { # name requests-before
    local now
    [ "$1" = breaker ] || return 0
    now=$(agent_requests)
    [ "$now" = "$2" ] || die "$1: the mock agent received $((now - $2)) requests while its breaker was open"
}

# --- open loop: a fixed offered rate, latency from when each request was due ----------------
# run_open name url status server-pid
run_open() {
    local out before
    before=$(agent_requests)
    out=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" open-loop --label "$1" --url "$2" --expect-status "$3" \
        --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
        --server-pid "$4") || die "$1: the load client failed"
    log "$(grep -v '^RESULT' <<<"$out")"
    check_agent_untouched "$1" "$before"
    echo "$(grep '^RESULT' <<<"$out") round=$ROUND" >>"$TMP/open"
}

# --- closed loop: wrk at full speed --------------------------------------------------------
# run_wrk name url non2xx-expected(0|1)
run_wrk() {
    local out rps p50 p99 total non2xx before
    before=$(agent_requests)
    out=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --timeout 10s --latency "$2")
    echo "$out" >>"$TMP/wrk-$1.txt"
    grep -q 'Socket errors' <<<"$out" && { echo "$out" >&2; die "$1: wrk socket errors"; }
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    non2xx=${non2xx:-0}
    if [ "$3" = 1 ] && [ "$non2xx" != "$total" ]; then
        echo "$out" >&2
        die "$1: $non2xx of $total answers were non-2xx (want all: every answer a 503)"
    fi
    if [ "$3" = 0 ] && [ "$non2xx" != 0 ]; then
        echo "$out" >&2
        die "$1: $non2xx non-2xx answers"
    fi
    check_agent_untouched "$1" "$before"
    log "wrk $1 -c$WRK_CONNECTIONS: $rps req/s, p50 $p50 us, p99 $p99 us"
    echo "$ROUND $1 $rps $p50 $p99" >>"$TMP/wrk"
}

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
: >"$TMP/open"
: >"$TMP/wrk"
for ROUND in $(seq 1 "$ROUNDS"); do
    run_open breaker "$OPEN_URL" 503 "$GW_PID"
    run_open healthz "$HEALTH_URL" 200 "$GW_PID"
    run_open direct "$DIRECT_URL" 200 "$BACKEND_PID"
done
for ROUND in $(seq 1 "$ROUNDS"); do
    run_wrk breaker "$OPEN_URL" 1
    run_wrk healthz "$HEALTH_URL" 0
    run_wrk direct "$DIRECT_URL" 0
done
state=$(curl -fsS "$ADMIN" | python3 -c 'import json, sys; b = json.load(sys.stdin)["echo"]; print(b["state"], b["rejected"])')
[ "${state%% *}" = forced_open ] || die "the echo breaker is no longer forced open after the runs: $state"

# --- report --------------------------------------------------------------------------------
echo
echo "open-breaker fail-fast benchmark: $(nproc --all) CPUs, $(uname -r); load client on CPU $LOADGEN_CPU, gateway + mock agent on CPU $SERVER_CPU"
echo "load average before the run: $LOAD0"
echo "breaker: GET /agents/echo/echo with the echo breaker forced open (503 circuit_open); healthz: GET /healthz of the gateway; direct: GET /echo of the mock agent"
echo "(server CPU: the gateway's for breaker and healthz, the mock agent's for direct, in the measured part; waiting: runnable but not running, i.e. something else used that CPU)"
echo "after the runs the echo breaker is still ${state%% *} and counts ${state#* } rejected calls; the mock agent received no request during the breaker runs"
echo
echo "open loop: loadgen, $RATE req/s offered for $DURATION after $WARMUP at the same rate, $CONNECTIONS keep-alive connections, latency from when each request was due"
echo
awk '
function kv(s, k,   i, n, a) { n = split(s, a, " "); for (i = 1; i <= n; i++) if (index(a[i], k "=") == 1) return substr(a[i], length(k) + 2); return "" }
function r(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "-" }
{
    R = kv($0, "round"); L = kv($0, "label"); rounds[R] = 1
    # (+ 0: compare as numbers, not as strings)
    ach[R, L] = kv($0, "achieved") + 0; p50[R, L] = kv($0, "p50_us") + 0; p90[R, L] = kv($0, "p90_us") + 0
    p99[R, L] = kv($0, "p99_us") + 0; p999[R, L] = kv($0, "p999_us") + 0; mx[R, L] = kv($0, "max_us") + 0
    cpu[R, L] = kv($0, "server_cpu") + 0; sw[R, L] = kv($0, "server_wait") + 0; lw[R, L] = kv($0, "loadgen_wait") + 0
}
END {
    printf "| round | target | achieved req/s | p50 (us) | p90 (us) | p99 (us) | p99.9 (us) | max (us) | server CPU | waiting for a CPU: server / loadgen |\n"
    printf "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    split("breaker healthz direct", vs, " ")
    for (R = 1; (R in rounds); R++) for (i = 1; i <= 3; i++) { v = vs[i]
        printf "| %d | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %s / %s |\n", R, v, ach[R, v], p50[R, v], p90[R, v], p99[R, v], p999[R, v], mx[R, v], \
            sprintf("%.0f%%", cpu[R, v] * 100), sprintf("%.0f%%", sw[R, v] * 100), sprintf("%.0f%%", lw[R, v] * 100)
    }
    printf "\n| round | ratio | p50 | p99 |\n|---:|---|---:|---:|\n"
    for (R = 1; (R in rounds); R++) {
        printf "| %d | breaker/healthz | %s | %s |\n", R, r(p50[R, "breaker"], p50[R, "healthz"]), r(p99[R, "breaker"], p99[R, "healthz"])
        printf "| %d | breaker/direct | %s | %s |\n", R, r(p50[R, "breaker"], p50[R, "direct"]), r(p99[R, "breaker"], p99[R, "direct"])
    }
    for (R = 1; (R in rounds); R++) for (i = 1; i <= 3; i++) { v = vs[i]
        if (sw[R, v] > 0.05 || lw[R, v] > 0.05)
            printf "WARNING: round %d %s: a process waited for its CPU (server %.0f%%, loadgen %.0f%%): something else ran on it, the figures are distorted\n", R, v, sw[R, v] * 100, lw[R, v] * 100
    }
    printf "\ntarget (p99 <= 1 ms at >= 20k req/s, open breaker):\n"
    for (R = 1; (R in rounds); R++) {
        ok = (p99[R, "breaker"] <= 1000 && ach[R, "breaker"] >= 20000 * 0.99)
        printf "  round %d: %.0f req/s, p99 %.1f us: %s\n", R, ach[R, "breaker"], p99[R, "breaker"], ok ? "met" : "MISSED"
    }
}' "$TMP/open"
echo
echo "closed loop: wrk -t1 -c$WRK_CONNECTIONS -d$WRK_DURATION (as fast as it goes; $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'))"
echo
awk '
function r(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "-" }
{ rounds[$1] = 1; rps[$1, $2] = $3; p50[$1, $2] = $4; p99[$1, $2] = $5 }
END {
    printf "| round | target | req/s | p50 (us) | p99 (us) |\n|---:|---|---:|---:|---:|\n"
    split("breaker healthz direct", vs, " ")
    for (R = 1; (R in rounds); R++) for (i = 1; i <= 3; i++) { v = vs[i]
        printf "| %d | %s | %.0f | %.1f | %.1f |\n", R, v, rps[R, v], p50[R, v], p99[R, v] }
    printf "\n| round | ratio | req/s | p50 | p99 |\n|---:|---|---:|---:|---:|\n"
    for (R = 1; (R in rounds); R++) {
        printf "| %d | breaker/healthz | %s | %s | %s |\n", R, r(rps[R, "breaker"], rps[R, "healthz"]), r(p50[R, "breaker"], p50[R, "healthz"]), r(p99[R, "breaker"], p99[R, "healthz"])
        printf "| %d | breaker/direct | %s | %s | %s |\n", R, r(rps[R, "breaker"], rps[R, "direct"]), r(p50[R, "breaker"], p50[R, "direct"]), r(p99[R, "breaker"], p99[R, "direct"])
    }
}' "$TMP/wrk"
