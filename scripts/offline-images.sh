#!/usr/bin/env bash
# Build everything `make up` needs without any image registry (air-gapped, or behind a
# proxy that containers cannot use):
#   1. a Debian base image from debootstrap (needs Debian's package mirror or a local one),
#   2. a stand-in broker image: Debian's mosquitto laid out like eclipse-mosquitto
#      (uid/gid 1883, /mosquitto/{config,data,log}, same entrypoint behaviour),
#   3. a Python base image (Debian's python3 + venv),
#   4. a wheelhouse (.wheelhouse/) of every Python package the app image installs,
# and writes MOSQUITTO_IMAGE and PYTHON_IMAGE into .env, so a following `make up` works.
# Idempotent: images and wheels already present are reused; --rebuild makes them again.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'USAGE'
usage: scripts/offline-images.sh [--suite bookworm] [--mirror URL] [--rebuild]

  --suite NAME   Debian suite for the base images (default bookworm)
  --mirror URL   Debian mirror for debootstrap (default http://deb.debian.org/debian)
  --rebuild      rebuild the images and wheelhouse even if present
USAGE
}

die() { echo "offline-images: error: $*" >&2; exit 2; }
say() { echo "offline-images: $*"; }

suite=bookworm
mirror=http://deb.debian.org/debian
rebuild=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --suite) [[ $# -ge 2 ]] || die "--suite needs a name"; suite=$2; shift 2 ;;
        --mirror) [[ $# -ge 2 ]] || die "--mirror needs a URL"; mirror=$2; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running? are you in the docker group?)"
# The classic builder: no BuildKit front-end image to pull.
export DOCKER_BUILDKIT=0

base="homewatch/debian:$suite"
broker="homewatch/mosquitto-offline:2.0-$suite"
python="homewatch/python-offline:$suite"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ $rebuild -eq 1 ]] || ! have_image "$base"; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    [[ $(id -u) -eq 0 ]] || die "debootstrap needs root: run with sudo"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    say "debootstrap $suite (about half a minute)"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$base" >/dev/null
    rm -rf "$root"
    say "made $base"
fi

if [[ $rebuild -eq 1 ]] || ! have_image "$broker"; then
    docker build -q --build-arg "BASE_IMAGE=$base" -t "$broker" images/broker-offline >/dev/null
    say "made $broker"
fi

if [[ $rebuild -eq 1 ]] || ! have_image "$python"; then
    docker build -q --build-arg "BASE_IMAGE=$base" -t "$python" images/python-offline >/dev/null
    say "made $python"
fi

# The wheelhouse must match the image's Python (version and platform).
img_py=$(docker run --rm "$python" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p .wheelhouse
reqs=$(python3 - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = p["optional-dependencies"]
deps = p["dependencies"] + extras["ble"] + extras["server"] + extras["dashboard"]
print("\n".join(deps + ["setuptools>=68", "wheel"]))
PY
)
# Downloaded again when pyproject.toml's requirements changed (a new dependency).
if [[ $rebuild -eq 1 ]] || ! ls .wheelhouse/*.whl >/dev/null 2>&1 ||
   [[ "$(cat .wheelhouse/requirements.txt 2>/dev/null)" != "$reqs" ]]; then
    say "downloading wheels for Python $img_py into .wheelhouse/"
    pyargs=()
    if [[ $img_py != "$host_py" ]]; then
        pyargs=(--python-version "$img_py" --only-binary=:all:
                --platform "manylinux_2_34_$(uname -m)" --platform "manylinux2014_$(uname -m)")
    fi
    # shellcheck disable=SC2086
    python3 -m pip download -q -d .wheelhouse "${pyargs[@]+"${pyargs[@]}"}" $(printf "%s\n" "$reqs" | sed "s/.*/'&'/" | xargs)
    printf '%s\n' "$reqs" > .wheelhouse/requirements.txt
fi

touch .env
for kv in "MOSQUITTO_IMAGE=$broker" "PYTHON_IMAGE=$python"; do
    key=${kv%%=*}
    if grep -q "^$key=" .env; then
        sed -i "s|^$key=.*|$kv|" .env
    else
        echo "$kv" >>.env
    fi
done
say "wrote MOSQUITTO_IMAGE and PYTHON_IMAGE to .env; now run: make up"
