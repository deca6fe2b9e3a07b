#!/usr/bin/env bash
# Reverse-proxy benchmark: wrk against the mock agent directly, through nginx, and through
# agentgate's `/agents/echo/echo` route, all in one run on loopback. See benches/README.md.
#
#   benches/proxy.sh                       # 2 rounds, about 75 s after the build
#   ROUNDS=1 DURATION=5 benches/proxy.sh   # knobs: ROUNDS, DURATION (s), WARMUP (s),
#                                          #        LOADGEN_CPU, SERVER_CPU, NO_BUILD=1,
#                                          #        AGENTGATE_BIN (another agentgate binary)
#   FLOOR=1 benches/proxy.sh               # also a fourth variant, "floor": a bare hyper
#                                          # server + hyper-util client proxy with nothing
#                                          # else (benches/harness/src/bin/bare_proxy.rs)
#   FLOOR_MODE=inline FLOOR=1 benches/proxy.sh  # the floor on another transport: one
#                                          # upstream connection per client connection,
#                                          # driven in that connection's task
#
# Pinning: wrk on LOADGEN_CPU (0); the backend and the proxy under test on SERVER_CPU (1).
# Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
FLOOR=${FLOOR:-0}
FLOOR_BIN=target/release/bare_proxy
# FLOOR_MODE=inline: the floor proxy drives one upstream connection per client connection
# in the client connection's task (hyper::client::conn) instead of hyper-util's pool.
FLOOR_MODE=${FLOOR_MODE:-legacy}
case "$FLOOR_MODE" in
    legacy) FLOOR_ARGS=() ;;
    inline) FLOOR_ARGS=(--inline) ;;
    *) echo "proxy.sh: FLOOR_MODE must be legacy or inline, not '$FLOOR_MODE'" >&2; exit 2 ;;
esac

BENCH_NAME=proxy.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
[ "$FLOOR_MODE" = legacy ] || [ "$FLOOR" = 1 ] || die "FLOOR_MODE=$FLOOR_MODE needs FLOOR=1"

# --- tools --------------------------------------------------------------------------------
require_tools wrk:wrk nginx:nginx taskset:util-linux curl:curl python3:python3
require_two_cpus

build_release -p agentgate-bin
require_exec "$BIN"
if [ "$FLOOR" = 1 ]; then
    build_release -p agentgate-bench-harness --bin bare_proxy
    require_exec "$FLOOR_BIN"
fi


BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
GW_PORT=$(free_port)
GW_ADMIN_PORT=$(free_port)

# --- backend: the fault-free mock agent ----------------------------------------------------
env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$BACKEND_PORT" --name echo \
    >"$TMP/backend.log" 2>&1 &
PIDS+=($!)

# --- nginx ---------------------------------------------------------------------------------
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /agents/echo/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
taskset -c "$SERVER_CPU" nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -g 'daemon off;' \
    >"$TMP/nginx.log" 2>&1 &
PIDS+=($!)

# --- agentgate -----------------------------------------------------------------------------
echo_agent_toml "127.0.0.1:$GW_PORT" "127.0.0.1:$GW_ADMIN_PORT" "$BACKEND_PORT" >"$TMP/agentgate.toml"
"$BIN" check --config "$TMP/agentgate.toml" >&2 || die "agentgate rejected the bench config"
taskset -c "$SERVER_CPU" "$BIN" run --config "$TMP/agentgate.toml" >"$TMP/agentgate.log" 2>&1 &
PIDS+=($!)

# The backend sees `GET /echo` in all three cases.
DIRECT_URL="http://127.0.0.1:$BACKEND_PORT/echo"
NGINX_URL="http://127.0.0.1:$NGINX_PORT/agents/echo/echo"
GW_URL="http://127.0.0.1:$GW_PORT/agents/echo/echo"
wait_http "$DIRECT_URL" "the mock agent"
wait_http "$NGINX_URL" "nginx"
wait_http "$GW_URL" "agentgate"
VARIANTS="direct nginx agentgate"
if [ "$FLOOR" = 1 ]; then
    FLOOR_PORT=$(free_port)
    taskset -c "$SERVER_CPU" "$FLOOR_BIN" "127.0.0.1:$FLOOR_PORT" "http://127.0.0.1:$BACKEND_PORT" \
        "${FLOOR_ARGS[@]}" >"$TMP/floor.log" 2>&1 &
    PIDS+=($!)
    FLOOR_URL="http://127.0.0.1:$FLOOR_PORT/echo"
    wait_http "$FLOOR_URL" "the bare hyper proxy"
    VARIANTS="$VARIANTS floor"
fi
for pair in "direct $DIRECT_URL" "nginx $NGINX_URL" "agentgate $GW_URL"; do
    set -- $pair
    size=$(curl -sS -o /dev/null -w '%{size_download}' "$2")
    log "$1: GET $2 -> 200, $size body bytes"
done

# --- load ----------------------------------------------------------------------------------
# run_wrk name url threads conns -> appends "round name conns rps p50us p99us" to $TMP/results
run_wrk() {
    local figures
    figures=$(wrk_measure "$@")
    echo "$ROUND $1 $4 $figures" >>"$TMP/results"
}

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
: >"$TMP/results"
for ROUND in $(seq 1 "$ROUNDS"); do
    for c in 64 1; do
        t=2
        [ "$c" -eq 1 ] && t=1
        run_wrk direct "$DIRECT_URL" "$t" "$c"
        run_wrk nginx "$NGINX_URL" "$t" "$c"
        run_wrk agentgate "$GW_URL" "$t" "$c"
        [ "$FLOOR" != 1 ] || run_wrk floor "$FLOOR_URL" "$t" "$c"
    done
done

# --- report --------------------------------------------------------------------------------
echo
echo "proxy benchmark: wrk ${DURATION}s (after ${WARMUP}s warm-up) on CPU $LOADGEN_CPU; backend + proxy on CPU $SERVER_CPU"
echo "load average before the run: $LOAD0"
[ "$FLOOR" != 1 ] || echo "floor: bare_proxy, FLOOR_MODE=$FLOOR_MODE"
echo "$(nproc --all) CPUs, $(uname -r), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')"
echo
awk -v variants="$VARIANTS" '
function r(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "-" }
{
    k = $1 SUBSEP $3; rounds[$1] = 1; conns[$3] = 1
    rps[k, $2] = $4; p50[k, $2] = $5; p99[k, $2] = $6
}
END {
    printf "| round | conns | variant | req/s | p50 (us) | p99 (us) |\n|---:|---:|---|---:|---:|---:|\n"
    for (R = 1; (R in rounds); R++) for (ci = 0; ci < 2; ci++) {
        c = ci == 0 ? 64 : 1; k = R SUBSEP c
        nv = split(variants, vs, " ")
        for (i = 1; i <= nv; i++) { v = vs[i]
            printf "| %d | %d | %s | %.0f | %.1f | %.1f |\n", R, c, v, rps[k, v], p50[k, v], p99[k, v] }
    }
    printf "\n| round | conns | ratio | req/s | p50 | p99 |\n|---:|---:|---|---:|---:|---:|\n"
    for (R = 1; (R in rounds); R++) for (ci = 0; ci < 2; ci++) {
        c = ci == 0 ? 64 : 1; k = R SUBSEP c
        printf "| %d | %d | agentgate/nginx | %s | %s | %s |\n", R, c, r(rps[k,"agentgate"], rps[k,"nginx"]), r(p50[k,"agentgate"], p50[k,"nginx"]), r(p99[k,"agentgate"], p99[k,"nginx"])
        printf "| %d | %d | agentgate/direct | %s | %s | %s |\n", R, c, r(rps[k,"agentgate"], rps[k,"direct"]), r(p50[k,"agentgate"], p50[k,"direct"]), r(p99[k,"agentgate"], p99[k,"direct"])
        printf "| %d | %d | nginx/direct | %s | %s | %s |\n", R, c, r(rps[k,"nginx"], rps[k,"direct"]), r(p50[k,"nginx"], p50[k,"direct"]), r(p99[k,"nginx"], p99[k,"direct"])
        if (index(variants, "floor")) {
            printf "| %d | %d | floor/nginx | %s | %s | %s |\n", R, c, r(rps[k,"floor"], rps[k,"nginx"]), r(p50[k,"floor"], p50[k,"nginx"]), r(p99[k,"floor"], p99[k,"nginx"])
            printf "| %d | %d | agentgate/floor | %s | %s | %s |\n", R, c, r(rps[k,"agentgate"], rps[k,"floor"]), r(p50[k,"agentgate"], p50[k,"floor"]), r(p99[k,"agentgate"], p99[k,"floor"])
        }
    }
    printf "\ntargets at 64 connections (agentgate req/s >= 1.0x nginx, p99 <= nginx):\n"
    for (R = 1; (R in rounds); R++) { k = R SUBSEP 64
        t1 = rps[k,"agentgate"] >= rps[k,"nginx"] ? "met" : "MISSED"
        t2 = p99[k,"agentgate"] <= p99[k,"nginx"] ? "met" : "MISSED"
        printf "  round %d: req/s %s (%s), p99 %s (%s)\n", R, r(rps[k,"agentgate"], rps[k,"nginx"]), t1, r(p99[k,"agentgate"], p99[k,"nginx"]), t2 }
}' "$TMP/results"
