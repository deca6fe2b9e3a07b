#!/usr/bin/env bash
# HTTPS reverse-proxy benchmark (SPEC §6, issue 17): wrk through agentgate's
# `/agents/NAME/echo` to the same mock agent binary over plain HTTP and over TLS, with
# kept-alive connections on both sides, all in one run on loopback. Target: HTTPS
# proxying at >= 0.8x the plain-HTTP proxy's req/s. See docs/BENCHMARKS.md.
#
#   benches/proxy_tls.sh                       # 2 rounds, about 60 s after the build
#   ROUNDS=1 DURATION=5 benches/proxy_tls.sh   # knobs: ROUNDS, DURATION (s), WARMUP (s),
#                                              #   CONNS, LOADGEN_CPU, SERVER_CPU, NO_BUILD=1
#
# Variants, each at CONNS (64) wrk connections:
#   plain      wrk --http--> agentgate --http--> mock agent            (the baseline)
#   tls        wrk --http--> agentgate --https (HTTP/1.1)--> mock agent
#   tls_h2     wrk --http--> agentgate --https (HTTP/2 by ALPN)--> mock agent
#   tls_both   wrk --https--> agentgate ([server.tls]) --https (HTTP/1.1)--> mock agent
# The certificates (a private CA, a server certificate for 127.0.0.1) are made with
# openssl in the run's temporary directory. wrk on LOADGEN_CPU (0); the mock agents and
# the gateways on SERVER_CPU (1), so the agent's side of TLS is paid on the same core as
# the gateway's. Prints figures only; it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-64}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BIN=${AGENTGATE_BIN:-target/release/agentgate}

BENCH_NAME=proxy_tls.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools wrk:wrk taskset:util-linux curl:curl python3:python3 openssl:openssl ss:iproute2
require_two_cpus
build_release -p agentgate-bin
require_exec "$BIN"

# --- certificates --------------------------------------------------------------------------
(
    cd "$TMP"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=agentgate bench CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
        -extfile server.ext -out server.pem 2>/dev/null
) || die "openssl could not make the certificates"

PLAIN_PORT=$(free_port)
TLS_PORT=$(free_port)
GW_PORT=$(free_port)
GW_ADMIN_PORT=$(free_port)
GWS_PORT=$(free_port)
GWS_ADMIN_PORT=$(free_port)

# --- the mock agents: one plain, one TLS (ALPN h2 and http/1.1) ---------------------------
env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$PLAIN_PORT" \
    --name echo >"$TMP/plain-agent.log" 2>&1 &
PIDS+=($!)
env RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" mock-agent --listen "127.0.0.1:$TLS_PORT" \
    --name echo --tls-cert "$TMP/server.pem" --tls-key "$TMP/server.key" >"$TMP/tls-agent.log" 2>&1 &
PIDS+=($!)

# --- the gateways: one with a plain public listener, one with [server.tls] ---------------
agents() { # the three agents, no retries, 30 s timeout
    cat <<TOML
[defaults]
timeout = "30s"
[defaults.retry]
max_attempts = 1

[agents.plain]
url = "http://127.0.0.1:$PLAIN_PORT"

[agents.tls]
url = "https://127.0.0.1:$TLS_PORT"
http_version = "1.1"
tls = { ca_file = "$TMP/ca.pem" }

[agents.tls_h2]
url = "https://127.0.0.1:$TLS_PORT"
http_version = "2"
tls = { ca_file = "$TMP/ca.pem" }
TOML
}
{
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n\n' "$GW_PORT" "$GW_ADMIN_PORT"
    agents
} >"$TMP/plain.toml"
{
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$GWS_PORT" "$GWS_ADMIN_PORT"
    printf '[server.tls]\ncert_file = "%s"\nkey_file = "%s"\n\n' "$TMP/server.pem" "$TMP/server.key"
    agents
} >"$TMP/tls.toml"
for config in plain tls; do
    "$BIN" check --config "$TMP/$config.toml" >&2 || die "agentgate rejected $config.toml"
    taskset -c "$SERVER_CPU" "$BIN" run --config "$TMP/$config.toml" >"$TMP/gateway-$config.log" 2>&1 &
    PIDS+=($!)
done

declare -A URL=(
    [plain]="http://127.0.0.1:$GW_PORT/agents/plain/echo"
    [tls]="http://127.0.0.1:$GW_PORT/agents/tls/echo"
    [tls_h2]="http://127.0.0.1:$GW_PORT/agents/tls_h2/echo"
    [tls_both]="https://127.0.0.1:$GWS_PORT/agents/tls/echo"
)
VARIANTS="plain tls tls_h2 tls_both"
wait_http "http://127.0.0.1:$PLAIN_PORT/echo" "the plain mock agent"
for v in plain tls tls_h2; do wait_http "${URL[$v]}" "agentgate ($v)"; done
for i in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 1 --cacert "$TMP/ca.pem" "${URL[tls_both]}" 2>/dev/null && break
    [ "$i" -eq 100 ] && die "agentgate with [server.tls] did not answer 200 within 10 s (logs in $TMP)"
    sleep 0.1
done

# --- load ----------------------------------------------------------------------------------
# run_wrk name url -> appends "round name rps p50us p99us" to $TMP/results
run_wrk() {
    local figures
    figures=$(wrk_measure "$1" "$2" 2 "$CONNS")
    echo "$ROUND $1 $figures" >>"$TMP/results"
}

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
: >"$TMP/results"
for ROUND in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do run_wrk "$v" "${URL[$v]}"; done
done
# Kept-alive upstream connections: the pools hold their connections to the TLS agent
# open (established), and a connection per request would leave thousands closing
# (time-wait) on its port.
conns_to() { ss -Htn state "$1" "( dport = :$TLS_PORT )" 2>/dev/null | wc -l; }
UPSTREAM="$(conns_to established) established, $(conns_to time-wait) in time-wait"

# --- report --------------------------------------------------------------------------------
echo
echo "HTTPS proxy benchmark: wrk -c$CONNS ${DURATION}s (after ${WARMUP}s warm-up) on CPU $LOADGEN_CPU; mock agents + gateways on CPU $SERVER_CPU"
echo "load average before the run: $LOAD0"
echo "$(nproc --all) CPUs, $(uname -r), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'), $(openssl version | awk '{print $1, $2}')"
echo "connections to the TLS mock agent after the run: $UPSTREAM"
echo
awk -v variants="$VARIANTS" '
function r(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "-" }
{ rounds[$1] = 1; rps[$1, $2] = $3; p50[$1, $2] = $4; p99[$1, $2] = $5 }
END {
    nv = split(variants, vs, " ")
    printf "| round | variant | req/s | p50 (us) | p99 (us) | req/s vs plain |\n|---:|---|---:|---:|---:|---:|\n"
    for (R = 1; (R in rounds); R++) for (i = 1; i <= nv; i++) { v = vs[i]
        printf "| %d | %s | %.0f | %.1f | %.1f | %s |\n", R, v, rps[R, v], p50[R, v], p99[R, v], r(rps[R, v], rps[R, "plain"]) }
    printf "\ntarget: HTTPS proxying >= 0.80x the plain-HTTP proxy req/s\n"
    for (R = 1; (R in rounds); R++) for (i = 2; i <= nv; i++) { v = vs[i]
        met = (rps[R, v] >= 0.8 * rps[R, "plain"]) ? "met" : "MISSED"
        printf "  round %d, %s: %s (%s)\n", R, v, r(rps[R, v], rps[R, "plain"]), met }
}' "$TMP/results"
