#!/usr/bin/env bash
# Make an emulated Debian bookworm for ARM (the Raspberry Pi's architecture), for the tests
# that install and run the publisher there (tests/test_arm.py): qemu-user-static and
# binfmt-support from Debian, binfmt_misc mounted and the architecture's interpreter
# enabled, then `debootstrap --variant=minbase` with Python, venv, pip, CA certificates and
# systemctl (scripts/install-pi.sh enables the unit with it) into DIR. For 32-bit armhf also
# Debian's cffi and dbus-fast: PyPI has no armv7l wheels of them, and the README's 32-bit
# recipe has the Pi owner `apt install` exactly these.
#
# Idempotent: the packages, the mount and the interpreter are only set up when missing, and
# a rootfs already made with the same recipe (its marker file) is kept as it is.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/../.."

SUITE=bookworm
MIRROR=${HOMEWATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3,python3-venv,python3-pip,ca-certificates,systemd

usage() {
    cat <<USAGE
usage: scripts/ci/arm-rootfs.sh [--arch arm64|armhf] [DIR]

  Makes a Debian $SUITE rootfs for ARCH (default arm64) in DIR (default
  \$HOMEWATCH_ARM_ROOT/ARCH, where HOMEWATCH_ARM_ROOT defaults to /opt/arm-rootfs),
  runnable here through qemu-user. Needs root and Debian's package mirror.
  Skips what is already there.
USAGE
}

die() { echo "arm-rootfs: error: $*" >&2; exit 2; }

arch=arm64 dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --arch) [[ $# -ge 2 ]] || die "--arch needs arm64 or armhf"; arch=$2; shift 2 ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) dir=$1; shift ;;
    esac
done
case $arch in
    arm64) qemu=qemu-aarch64 ;;
    armhf) qemu=qemu-arm  # python3-ply: debootstrap does not pick a virtual package (ply-lex)
        INCLUDE+=,python3-cffi,python3-dbus-fast,python3-ply ;;
    *) die "--arch: arm64 or armhf, not $arch" ;;
esac
[[ -n $dir ]] || dir=${HOMEWATCH_ARM_ROOT:-/opt/arm-rootfs}/$arch
[[ $dir == /* ]] || dir=$caller_pwd/$dir
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, binfmt_misc and chroot need it)"

# 1. the emulator, registered with the kernel ("F": the kernel keeps the interpreter
#    open, so it works inside a chroot that has no qemu binary of its own)
if ! command -v debootstrap >/dev/null || ! [[ -x /usr/bin/$qemu-static ]] \
        || ! command -v update-binfmts >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qemu-user-static binfmt-support debootstrap >/dev/null
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null; then
    update-binfmts --enable "$qemu"
fi
grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu" || die "binfmt_misc: $qemu is not enabled"

# 2. the rootfs, made aside and moved into place only when complete
recipe="$SUITE $arch minbase $INCLUDE"
marker=$dir/.homewatch-arm-rootfs
if [[ -f $marker && $(cat "$marker") == "$recipe" ]]; then
    echo "arm-rootfs: $dir already holds Debian $SUITE $arch"
else
    [[ ! -e $dir ]] || rm -rf --one-file-system "$dir"
    partial=$dir.partial
    rm -rf --one-file-system "$partial"
    mkdir -p "$(dirname "$dir")"
    start=$SECONDS
    if ! debootstrap --arch="$arch" --variant=minbase --include="$INCLUDE" \
            "$SUITE" "$partial" "$MIRROR" >"$partial.log" 2>&1; then
        tail -n 20 "$partial.log" >&2
        die "debootstrap failed (log: $partial.log)"
    fi
    rm -f "$partial.log"
    echo "$recipe" >"$partial/.homewatch-arm-rootfs"
    mv "$partial" "$dir"
    echo "arm-rootfs: Debian $SUITE $arch made in $dir in $((SECONDS - start)) s"
fi

# 3. what the host gives it: names (localhost) and the emulated Python's own check
cp /etc/hosts "$dir/etc/hosts"
machine=$(chroot "$dir" python3 -c 'import platform; print(platform.machine())')
echo "arm-rootfs: $dir runs $(chroot "$dir" python3 --version) on $machine (emulated)"
