#!/usr/bin/env bash
# Install Home Assistant Core in its own virtualenv, for the tests that run a real one
# (tests/homeassistant.py). Never into the project's environment: it pins paho-mqtt 1.6.
#
# 2024.3.3 is the newest release that runs on Python 3.11. It is installed against its own
# constraints file (taken from its wheel), with josepy<2 (josepy 2 breaks its cloud code at
# import) and the packages it would otherwise pip-install at start, which the tests forbid
# (--skip-pip). Idempotent: nothing is done when that version is already there.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/../.."

VERSION=2024.3.3
# What Home Assistant installs at its first start (recorder, frontend, mqtt, ...).
AT_START=(
    'paho-mqtt==1.6.1'
    'home-assistant-frontend==20240307.0'
    'SQLAlchemy==2.0.27'
    'fnv-hash-fast==0.5.0'
    'psutil-home-assistant==0.0.1'
    'securetar==2024.2.1'
    'janus==1.0.0'
    'Pillow==10.2.0'
)

usage() {
    cat <<USAGE
usage: scripts/ci/install-homeassistant.sh [--python PYTHON] [DIR]

  Installs Home Assistant Core $VERSION into the virtualenv DIR (default
  \$HOMEWATCH_HA_VENV or /opt/homeassistant), made with PYTHON (default python3, 3.11).
  Skips everything when DIR already holds that version with its start-up packages.
USAGE
}

die() { echo "install-homeassistant: error: $*" >&2; exit 2; }

python=python3
venv=${HOMEWATCH_HA_VENV:-/opt/homeassistant}
[[ $venv == /* ]] || venv=$caller_pwd/$venv
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; python=$2; shift 2 ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) venv=$1; [[ $venv == /* ]] || venv=$caller_pwd/$venv; shift ;;
    esac
done

marker="$venv/.homewatch-homeassistant"
if [[ -x $venv/bin/python && -f $marker && $(cat "$marker") == "$VERSION" ]]; then
    echo "Home Assistant $VERSION is already installed in $venv"
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$python is not Python 3.11 (Home Assistant $VERSION needs 3.11 here)"

rm -f "$marker"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip wheel

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" -m pip download -q --no-deps -d "$work" "homeassistant==$VERSION"
wheel=$(ls "$work"/homeassistant-"$VERSION"-*.whl)
"$venv/bin/python" - "$wheel" "$work/constraints.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    data = wheel.read("homeassistant/package_constraints.txt")
open(sys.argv[2], "wb").write(data)
PY

"$venv/bin/python" -m pip install -q -c "$work/constraints.txt" \
    "$wheel" 'josepy<2' "${AT_START[@]}"
"$venv/bin/python" -c 'import homeassistant.const as c, paho.mqtt, sqlalchemy, hass_frontend; print("Home Assistant", c.__version__)'
echo "$VERSION" >"$marker"
echo "Home Assistant $VERSION installed in $venv"
