# Shared by the benchmark scripts: source it after setting BENCH_NAME (and after `cd` to
# the repository root). It creates $TMP, records started processes in PIDS, and on exit
# stops exactly those (SIGTERM, up to 5 s, then SIGKILL) and removes $TMP; with
# KEEP=DIR it first copies $TMP's files (logs, callgrind profiles) into DIR.

die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

TMP=$(mktemp -d -t "agentgate-$BENCH_NAME-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid i alive
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp -r "$TMP"/. "$KEEP"/ && echo "==> kept $TMP's files in $KEEP" >&2
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # url [what]: up to 10 s for a 200
    local i
    for i in $(seq 1 100); do
        if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "${2:-$1} did not answer 200 within 10 s (logs in $TMP)"
}

render() { # template NAME=value...: prints the template with each @NAME@ replaced by its
    # value; dies if a @NAME@ is left (the template and its caller disagree)
    local template=$1 text pair
    text=$(<"$template") || die "cannot read $template"
    shift
    for pair in "$@"; do text=${text//"@${pair%%=*}@"/"${pair#*=}"}; done
    if [[ $text =~ @[A-Z_]+@ ]]; then die "$template: ${BASH_REMATCH[0]} is not filled in"; fi
    printf '%s\n' "$text"
}

three_stage_toml() { # the agents nlp, data, viz on ${PORT[...]} and a 3-stage `default` pipeline
    cat <<TOML
[agents.nlp]
url = "http://127.0.0.1:${PORT[nlp]}"
[agents.data]
url = "http://127.0.0.1:${PORT[data]}"
[agents.viz]
url = "http://127.0.0.1:${PORT[viz]}"

[pipelines.default]
deadline = "30s"

[[pipelines.default.stages]]
name = "nlp_processing"
agent = "nlp"
path = "/process"

[[pipelines.default.stages]]
name = "data_retrieval"
agent = "data"
path = "/query"

[[pipelines.default.stages]]
name = "visualization"
agent = "viz"
path = "/render"
TOML
}

require_tools() { # cmd:debian-package ...: installs what is missing (apt-get, root), or dies
    local pair need=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${need[*]}"
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
            die "apt-get install ${need[*]} failed"
    fi
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 ||
            die "${pair%%:*} is still missing after trying to install it"
    done
}

pip_tool() { # package==version: installs the pinned package once, into a directory of its
    # own under $BENCH_TOOLS (~/.cache/agentgate-bench) with `pip install --target` (no
    # virtualenv, nothing in the system's Python), and prints that directory
    local dir="${BENCH_TOOLS:-$HOME/.cache/agentgate-bench}/${1/==/-}"
    if [ ! -e "$dir/.installed" ]; then
        python3 -m pip --version >/dev/null 2>&1 || require_tools pip3:python3-pip
        log "installing $1 into $dir"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "$1" >&2 ||
            die "pip install $1 failed"
        touch "$dir/.installed"
    fi
    echo "$dir"
}

build_release() { # cargo build arguments: a release build, unless NO_BUILD=1
    [ "${NO_BUILD:-0}" = 1 ] && return 0
    log "cargo build --release $*"
    cargo build --release "$@" >&2
}

require_exec() { # paths: dies unless each is an executable file (built, or given by the user)
    local f
    for f in "$@"; do [ -x "$f" ] || die "$f not found"; done
}

to_us() { # a wrk latency (e.g. 1.23ms) -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1e6;
        else if (u == "m") f = 6e7; else f = -1;
        if (f < 0) { print "NaN"; exit 1 } printf "%.1f", n * f }'
}

wrk_measure() { # name url threads conns: wrk for $WARMUP s, then measured for $DURATION s
    # on $LOADGEN_CPU; dies on a non-2xx answer or a socket error; appends wrk's report to
    # $TMP/wrk-NAME-cCONNS.txt and prints "req/s p50us p99us"
    local name=$1 url=$2 t=$3 c=$4 out rps p50 p99 bad
    taskset -c "$LOADGEN_CPU" wrk -t"$t" -c"$c" -d"${WARMUP}s" --timeout 10s "$url" >/dev/null
    out=$(taskset -c "$LOADGEN_CPU" wrk -t"$t" -c"$c" -d"${DURATION}s" --timeout 10s --latency "$url")
    echo "$out" >>"$TMP/wrk-$name-c$c.txt"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF} /Socket errors:/ {print "socket-errors"}' <<<"$out")
    if [ -n "$bad" ]; then
        echo "$out" >&2
        die "$name -c$c: errors during the run ($bad)"
    fi
    log "$name -c$c: $rps req/s, p50 ${p50} us, p99 ${p99} us"
    echo "$rps $p50 $p99"
}

raise_nofile() { # needed what: the open-files limit (inherited by what this script starts)
    # to NOFILE, or to the hard limit when that is lower and cannot be raised (a container
    # without CAP_SYS_RESOURCE keeps root's hard limit); dies below `needed`.
    local hard
    ulimit -Hn "$NOFILE" 2>/dev/null || true
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] || [ "$hard" -ge "$NOFILE" ] || NOFILE=$hard
    ulimit -n "$NOFILE" || die "cannot raise the open-files limit to $NOFILE"
    [ "$(ulimit -n)" -ge "$1" ] ||
        die "open-files limit $(ulimit -n) (hard $hard) is too low for $2"
}

require_two_cpus() {
    [ "$(nproc --all)" -ge 2 ] || die "needs at least 2 CPUs (load generator and servers are pinned apart)"
}
