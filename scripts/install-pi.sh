#!/usr/bin/env bash
# Install the Homewatch publisher on a Raspberry Pi as a hardened systemd service.
#
#   sudo scripts/install-pi.sh pi-kitchen.tar.gz [--known-devices FILE]
#
# 1. the device bundle (from `make add-device` on the server) -> /etc/homewatch/device/
#    (root only: 0700, secrets 0600);
# 2. the known-devices file -> /etc/homewatch/known-devices (0600; an empty one if none);
# 3. a virtualenv in /opt/homewatch with `homewatch[ble]` from this checkout (or --source);
#    on 32-bit ARM, where PyPI has no cffi wheel, it uses Debian's python3-cffi and
#    python3-dbus-fast (and refuses, saying so, when they are missing);
# 4. deploy/homewatch-publisher.service -> /etc/systemd/system/ (with --room, a drop-in
#    homewatch-publisher.service.d/room.conf setting HOMEWATCH_ROOM), then
#    `systemctl daemon-reload && systemctl enable --now homewatch-publisher`.
#
# Run again without a bundle to upgrade the program and the unit; the credentials stay.
# Replacing installed credentials (a new bundle) needs --force.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    cat <<'EOF'
usage: sudo scripts/install-pi.sh [BUNDLE.tar.gz] [options]
  --known-devices FILE  install this known-devices file (MAC or irk:KEY, then a name)
  --room NAME           the room this Pi stands in (default: its device name); kept
                        in a drop-in, so upgrades keep it
  --source SPEC         what pip installs (default: this checkout); e.g.
                        'homewatch @ git+https://example.org/homewatch.git'
  --wheels DIR          install offline from a directory of wheels (pip --no-index)
  --root DIR            install under DIR instead of / (staging; systemctl --root,
                        nothing started)
  --no-start            install and enable, but do not start the service now
  --force               replace credentials already installed
EOF
}

die() { echo "install-pi: error: $1" >&2; exit "${2:-1}"; }  # die MESSAGE [CODE]

bundle="" known="" room="" source="$here" wheels="" root="" start=1 force=0
while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --known-devices) known=${2:?}; shift ;;
        --room) room=${2:?}; shift ;;
        --source) source=${2:?}; shift ;;
        --wheels) wheels=${2:?}; shift ;;
        --root) root=${2:?}; shift ;;
        --no-start) start=0 ;;
        --force) force=1 ;;
        -*) usage >&2; die "unknown option $1" 2 ;;
        *) [[ -z $bundle ]] || die "one bundle at a time" 2; bundle=$1 ;;
    esac
    shift
done
[[ -z $root ]] || root=$(mkdir -p "$root" && cd "$root" && pwd)
[[ -z $root && $(id -u) -ne 0 ]] && die "run as root (sudo), or stage with --root DIR" 2
[[ -z $bundle || -f $bundle ]] || die "bundle not found: $bundle" 2
[[ -z $known || -f $known ]] || die "known-devices file not found: $known" 2
[[ -z $wheels || -d $wheels ]] || die "wheel directory not found: $wheels" 2
if [[ $room == *[\"\\%[:cntrl:]]* ]]; then
    die "--room: use a name without quotes, backslashes or %" 2
fi
# 32-bit ARM (Raspberry Pi OS 32-bit): PyPI has no cffi wheel for it (cryptography needs
# it) nor one of dbus-fast 4 (bleak 3 needs it), so Debian's must be there first.
arm32=0
case $(uname -m) in armv6l|armv7l|armv8l) arm32=1 ;; esac
if [[ $arm32 -eq 1 ]] && ! python3 -c 'import cffi, dbus_fast' 2>/dev/null; then
    die "32-bit ARM ($(uname -m)): PyPI has no cffi wheel for it; first run: sudo apt install python3-cffi python3-dbus-fast" 2
fi

etc=$root/etc/homewatch
device=$etc/device
prefix=$root/opt/homewatch
unitdir=$root/etc/systemd/system
umask 077

# 1. credentials
if [[ -n $bundle ]]; then
    if [[ -e $device/fernet.key && $force -ne 1 ]]; then
        die "credentials already installed in $device (--force to replace them)"
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar -xzf "$bundle" -C "$tmp" --no-same-owner --no-same-permissions
    src=$(find "$tmp" -mindepth 2 -maxdepth 2 -name fernet.key -printf '%h\n' | head -n 1)
    [[ -n $src ]] || die "$bundle is not a device bundle (no <name>/fernet.key inside)"
    files=(ca.crt password fernet.key client.crt client.key homewatch.env)
    for f in "${files[@]}"; do  # all there before anything is replaced
        [[ -f $src/$f ]] || die "$bundle has no $f (make it with: make add-device NAME=...)"
    done
    install -d -m 700 "$etc" "$device"
    for f in "${files[@]}"; do
        install -m 600 "$src/$f" "$device/$f"
    done
    echo "credentials for $(sed -n 's/^HOMEWATCH_DEVICE=//p' "$device/homewatch.env") -> $device"
elif [[ ! -f $device/fernet.key ]]; then
    die "no credentials in $device yet: give the device bundle (make add-device NAME=... on the server)" 2
fi

# 2. known devices (only a service credential: readable by root, handed to the service)
if [[ -n $known ]]; then
    install -m 600 "$known" "$etc/known-devices"
elif [[ ! -f $etc/known-devices ]]; then
    printf '# MAC or irk:KEY                         name\n' >"$etc/known-devices"
    chmod 600 "$etc/known-devices"
fi

# 3. the program
umask 022
venv_args=()
pip_args=(--quiet --disable-pip-version-check)
if [[ $arm32 -eq 1 ]]; then
    # Debian's cffi and dbus-fast are used (the venv sees them), never compiled by pip
    venv_args=(--system-site-packages)
    pip_args+=(--only-binary=cffi,dbus-fast)
    if [[ -f $prefix/pyvenv.cfg ]] \
            && ! grep -q '^include-system-site-packages = true' "$prefix/pyvenv.cfg"; then
        rm -rf "$prefix"  # made without Debian's packages: made again
    fi
fi
[[ -x $prefix/bin/python3 ]] || python3 -m venv "${venv_args[@]}" "$prefix"
[[ -z $wheels ]] || pip_args+=(--no-index --find-links "$wheels")
spec=$source
[[ -d $source ]] && spec="$source[ble]"
"$prefix/bin/pip" install "${pip_args[@]}" --upgrade "$spec"
[[ -x $prefix/bin/homewatch-publisher ]] || die "pip did not install homewatch-publisher"
echo "program: $prefix ($("$prefix/bin/homewatch-publisher" --version))"

# 4. the service
install -d -m 755 "$unitdir"
install -m 644 "$here/deploy/homewatch-publisher.service" "$unitdir/"
if [[ -n $room ]]; then
    install -d -m 755 "$unitdir/homewatch-publisher.service.d"
    printf '[Service]\nEnvironment="HOMEWATCH_ROOM=%s"\n' "$room" \
        >"$unitdir/homewatch-publisher.service.d/room.conf"
    chmod 644 "$unitdir/homewatch-publisher.service.d/room.conf"
    echo "room: $room"
fi
if [[ -n $root ]]; then
    systemctl --root="$root" enable homewatch-publisher.service
    echo "staged under $root: enabled, not started"
elif [[ ! -d /run/systemd/system ]]; then
    systemctl --root=/ enable homewatch-publisher.service
    echo "systemd is not running here: enabled for the next boot"
else
    systemctl daemon-reload
    if [[ $start -eq 1 ]]; then
        systemctl enable homewatch-publisher.service
        systemctl restart homewatch-publisher.service  # (re)start: new program/credentials
        echo "started: journalctl -u homewatch-publisher -f"
    else
        systemctl enable homewatch-publisher.service
        echo "enabled; start it with: sudo systemctl start homewatch-publisher"
    fi
fi
