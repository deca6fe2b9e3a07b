#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does not move with
# the machine's noise, unlike benches/proxy.sh's requests per second. See benches/README.md.
#
#   benches/proxy_instructions.sh            # agentgate and the floor (bare hyper proxy)
#   AGENTGATE_BIN=/other/agentgate benches/proxy_instructions.sh   # another build
#   knobs: N1, N2 (requests of the two runs; default 2000 and 6000), CONNS (8), NO_BUILD=1
#
# Each proxy runs under `valgrind --tool=callgrind` twice, for N1 and for N2 proxied
# `GET /echo` requests (after 500 to warm up), from `wrk -t1 -c$CONNS` with a Lua script
# that stops after N answers; the mock agent behind it runs natively. The figure is
# (instructions at N2 - instructions at N1) / (N2 - N1), all of the proxy's threads:
# start-up, warm-up and shutdown cancel out. Prints figures only; not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-2000}
N2=${N2:-6000}
CONNS=${CONNS:-8}
BIN=${AGENTGATE_BIN:-target/release/agentgate}
FLOOR_BIN=target/release/bare_proxy

BENCH_NAME=proxy_instructions.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh

require_tools valgrind:valgrind wrk:wrk curl:curl python3:python3
build_release -p agentgate-bin
build_release -p agentgate-bench-harness --bin bare_proxy
require_exec "$BIN" "$FLOOR_BIN"

BACKEND_PORT=$(free_port)
env RUST_LOG=warn "$BIN" mock-agent --listen "127.0.0.1:$BACKEND_PORT" --name echo \
    >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BACKEND_PORT/echo" "the mock agent"

cat >"$TMP/count.lua" <<'LUA'
local n = 0
local limit = tonumber(os.getenv("N"))
function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("non-200 answer: " .. status .. "\n")
    os.exit(1)
  end
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
LUA

# count kind n -> prints the proxy's instructions for n requests (plus fixed costs)
count() {
    local kind=$1 n=$2 port admin url pid total secs
    port=$(free_port)
    if [ "$kind" = floor ]; then
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$kind.$n" \
            "$FLOOR_BIN" "127.0.0.1:$port" "http://127.0.0.1:$BACKEND_PORT" >"$TMP/$kind.$n.log" 2>&1 &
        url="http://127.0.0.1:$port/echo"
    else
        admin=$(free_port)
        render benches/proxy/agentgate.toml LISTEN_PORT="$port" ADMIN_PORT="$admin" \
            BACKEND_PORT="$BACKEND_PORT" >"$TMP/agentgate.toml"
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$kind.$n" \
            "$BIN" run --config "$TMP/agentgate.toml" >"$TMP/$kind.$n.log" 2>&1 &
        url="http://127.0.0.1:$port/agents/hello/echo"
    fi
    pid=$!
    PIDS+=("$pid")
    # Under valgrind start-up takes seconds.
    for _ in $(seq 1 100); do curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && break; sleep 0.3; done
    wait_http "$url" "$kind under callgrind"
    # wrk runs until -d even after its thread stopped: long enough for N under valgrind.
    secs=$((n / 150 + 10))
    N=500 wrk -t1 -c"$CONNS" -d10s -s "$TMP/count.lua" "$url" >/dev/null \
        || die "$kind: the warm-up failed"
    N=$n wrk -t1 -c"$CONNS" -d"${secs}s" -s "$TMP/count.lua" "$url" >"$TMP/wrk.$kind.$n" \
        || die "$kind: the run failed"
    # SIGINT is agentgate's graceful shutdown; the bare proxy has none and gets SIGTERM.
    kill -INT "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    total=$(grep -h '^summary:' "$TMP/cg.$kind.$n"* | awk '{s += $2} END {print s}')
    [ -n "$total" ] || die "$kind: no callgrind summary"
    echo "$total"
}

declare -A per
for kind in agentgate floor; do
    a=$(count "$kind" "$N1")
    b=$(count "$kind" "$N2")
    per[$kind]=$(( (b - a) / (N2 - N1) ))
    log "$kind: $a instructions at $N1 requests, $b at $N2"
done

echo
echo "| proxy | instructions per proxied GET |"
echo "|---|---:|"
echo "| agentgate ($BIN) | ${per[agentgate]} |"
echo "| floor (bare hyper + hyper-util) | ${per[floor]} |"
echo "RESULT agentgate ${per[agentgate]} floor ${per[floor]} ratio $(python3 -c "print(f'{${per[agentgate]} / ${per[floor]}:.2f}')")"
