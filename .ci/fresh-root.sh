#!/usr/bin/env bash
# Clean-room check: do README.md's two set-up commands work, verbatim, on a brand-new
# Debian 12?  Builds a new Debian 12 (bookworm) root with debootstrap, holding only
# python3, python3-venv, python3-pip, git and ca-certificates; mounts what the test lab
# needs; carries in this machine's pip settings, apt mirror and CA certificates (the
# registries may sit behind a proxy); copies a clean clone of this checkout's HEAD; then
# runs the two commands, read from README.md (.ci/readme_commands.py), as root in that
# root, printing the time of each.
#
# Opt-in (not part of .ci/run), as root:  bash .ci/fresh-root.sh
#   FRESH_ROOT=DIR  where to build (default /var/tmp/exprobe-fresh-root); removed at the
#                   end unless KEEP=1.
#   MIRROR=URL      Debian mirror (default: the first URIs of this machine's sources).
#   FRESH_LOG=PATH  the whole output of command N goes to PATH.N (default
#                   /var/tmp/exprobe-fresh-root.log.N); TAIL=N lines of it are shown.
# Takes about 6 minutes on 2 cores (docs/lab.md).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOTFS=${FRESH_ROOT:-/var/tmp/exprobe-fresh-root}
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip,git,ca-certificates

log() { printf 'fresh-root: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
command -v debootstrap >/dev/null || {
    log "installing debootstrap"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }

# One clean room at a time; the lab inside uses the machine's namespace names and addresses.
exec 9>/var/lock/exprobe-fresh-root.lock
flock -n 9 || { log "another fresh-root run holds /var/lock/exprobe-fresh-root.lock"; exit 1; }
# The lab's veth pairs are made in the machine's own network namespace: no other lab run now.
# (EXPROBE_LAB_LOCK_HELD=1: the caller holds /tmp/exprobe-lab.lock already, e.g. under
# `flock /tmp/exprobe-lab.lock ...`; a second flock on it would wait for ever.)
if [ "${EXPROBE_LAB_LOCK_HELD:-0}" != 1 ]; then
    exec 8>/tmp/exprobe-lab.lock
    flock -w 1800 8 || { log "the test lab is busy (/tmp/exprobe-lab.lock)"; exit 1; }
fi

if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)$/\1/p' \
                 /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

MOUNTS=()
cleanup() {
    local rc=$? m
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
        m=${MOUNTS[i]}
        umount -R "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" != 1 ] && [ -d "$ROOTFS" ]; then
        # Only after every mount under it is gone: never delete through a bind mount.
        if ! grep -q " $ROOTFS" /proc/mounts; then rm -rf --one-file-system "$ROOTFS"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
took() { printf '%.1f' "$(echo "$(now) - $1" | bc 2>/dev/null || python3 -c "import sys,time;print(time.time()-float(sys.argv[1]))" "$1")"; }

if [ -e "$ROOTFS" ]; then
    grep -q " $ROOTFS" /proc/mounts && { log "$ROOTFS has mounts; refusing"; exit 1; }
    rm -rf --one-file-system "$ROOTFS"
fi
mkdir -p "$ROOTFS"

t=$(now)
log "debootstrap $SUITE ($MIRROR) into $ROOTFS"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$ROOTFS.debootstrap.log" 2>&1 || { tail -20 "$ROOTFS.debootstrap.log" >&2; exit 1; }
rm -f "$ROOTFS.debootstrap.log"
echo "debootstrap: $(took "$t") s"

# The machine's package and pip settings (mirrors, proxies, CA) go in; nothing else does.
cp /etc/apt/sources.list.d/debian.sources "$ROOTFS/etc/apt/sources.list.d/" 2>/dev/null \
    && rm -f "$ROOTFS/etc/apt/sources.list" || true
cp /etc/apt/apt.conf.d/99* "$ROOTFS/etc/apt/apt.conf.d/" 2>/dev/null || true
if [ -d /usr/local/share/ca-certificates ]; then
    cp -r /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
fi
chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || true
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOTFS/etc/xdg" && cp -r /etc/xdg/pip "$ROOTFS/etc/xdg/"
for d in .config/pip .pip; do
    [ -d "$HOME/$d" ] && mkdir -p "$ROOTFS/root/$d" && cp -r "$HOME/$d/." "$ROOTFS/root/$d/"
done
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
# Every local wheel directory or index the pip settings name comes in too (read-only use).
for dir in $(cat /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" 2>/dev/null \
             | grep -oE '(file://)?/opt/[^ ]+' | sed 's|^file://||') ${PIP_FIND_LINKS:-}; do
    [ -d "$dir" ] || continue
    mkdir -p "$ROOTFS$dir"; mount --bind "$dir" "$ROOTFS$dir"; MOUNTS+=("$ROOTFS$dir")
    mount -o remount,bind,ro "$ROOTFS$dir"
done

# What the lab needs: / as a mount point (ip netns bind-mounts under /run/netns), the
# kernel's file systems, and a tmpfs /run as on a booted machine.
mount --bind "$ROOTFS" "$ROOTFS";          MOUNTS+=("$ROOTFS")
mount -t proc proc "$ROOTFS/proc";         MOUNTS+=("$ROOTFS/proc")
mount -t sysfs sysfs "$ROOTFS/sys";        MOUNTS+=("$ROOTFS/sys")
mount --bind /dev "$ROOTFS/dev";           MOUNTS+=("$ROOTFS/dev")
mount --bind /dev/pts "$ROOTFS/dev/pts";   MOUNTS+=("$ROOTFS/dev/pts")
mount -t tmpfs tmpfs "$ROOTFS/run";        MOUNTS+=("$ROOTFS/run")
mkdir -p "$ROOTFS/run/lock"

# A clean clone of what is committed here, with ../shared beside it as in CI.
WORK=/work/exprobe
mkdir -p "$ROOTFS/work"
git clone -q --no-hardlinks "$REPO" "$ROOTFS$WORK"
if [ -d "$REPO/../shared" ]; then cp -r "$REPO/../shared" "$ROOTFS/work/shared"; fi

mapfile -t COMMANDS < <(python3 .ci/readme_commands.py)
[ "${#COMMANDS[@]}" = 2 ] || { log "README.md: expected two commands, got ${#COMMANDS[@]}"; exit 1; }
envs=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      TERM=dumb)
while IFS='=' read -r k v; do envs+=("$k=$v"); done < <(env | grep -E '^PIP_' || true)
chroot "$ROOTFS" /usr/bin/python3 --version
# The whole output of command N goes to $LOG.N (outside the root, kept); the end is shown.
LOG=${FRESH_LOG:-/var/tmp/exprobe-fresh-root.log}
rm -f "$LOG".*
rc=0 n=0
for cmd in "${COMMANDS[@]}"; do
    echo "== \$ $cmd"
    n=$((n + 1))
    t=$(now)
    set +e
    chroot "$ROOTFS" /usr/bin/env -i "${envs[@]}" /bin/bash -c "cd $WORK && $cmd" 2>&1 \
        | tee "$LOG.$n" | tail -n "${TAIL:-25}"
    status=${PIPESTATUS[0]}
    set -e
    echo "== exit $status after $(took "$t") s: $cmd  (whole output: $LOG.$n)"
    [ "$status" = 0 ] || rc=$status
done
echo "Debian packages in the root: $(chroot "$ROOTFS" dpkg-query -W -f='${db:Status-Abbrev}\n' | grep -c '^ii')"
exit "$rc"
