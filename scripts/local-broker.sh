#!/usr/bin/env bash
# Run the project's broker (broker/mosquitto.conf) with a locally installed mosquitto,
# without Docker: for development, tests and machines where Docker is not wanted.
#
# The configuration is the very same file; only the official image's paths and the
# listener's bind address are rewritten. Runs in the foreground (exec), so signals reach
# mosquitto: SIGHUP reloads passwords/ACL/certificates, SIGTERM stops it.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/.."
abs() { if [[ $1 == /* ]]; then printf '%s' "$1"; else printf '%s' "$caller_pwd/$1"; fi; }

usage() {
    cat <<'USAGE'
usage: scripts/local-broker.sh [--certs DIR] [--data DIR] [--port N] [--bind ADDR] [--conf FILE]

  --certs DIR   certs directory made by gen-certs.sh and `homewatch device add` (default ./certs)
  --data DIR    where the rendered config, persistence and log go (default ./state/broker)
  --port N      TLS listener port (default 8883)
  --bind ADDR   listener address (default 127.0.0.1; 0.0.0.0 to serve the LAN)
  --conf FILE   broker configuration (default broker/mosquitto.conf; mutual TLS:
                broker/mosquitto-mtls.conf)
USAGE
}

die() { echo "local-broker: error: $*" >&2; exit 2; }

certs=$(abs certs)
data=$(abs state/broker)
port=8883
bind=127.0.0.1
source_conf=broker/mosquitto.conf
while [[ $# -gt 0 ]]; do
    case "$1" in
        --certs) [[ $# -ge 2 ]] || die "--certs needs a directory"; certs=$(abs "$2"); shift 2 ;;
        --data) [[ $# -ge 2 ]] || die "--data needs a directory"; data=$(abs "$2"); shift 2 ;;
        --port) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--port needs a number"; port=$2; shift 2 ;;
        --bind) [[ $# -ge 2 ]] || die "--bind needs an address"; bind=$2; shift 2 ;;
        --conf) [[ $# -ge 2 ]] || die "--conf needs a file"; source_conf=$(abs "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v mosquitto >/dev/null || die "mosquitto is not installed (apt-get install mosquitto)"
for f in ca.crt server.crt server.key passwd acl; do
    [[ -e $certs/broker/$f ]] || die "$certs/broker/$f is missing: run scripts/gen-certs.sh and \`homewatch device add subscriber\` first"
done
certs_abs=$(cd "$certs/broker" && pwd)
umask 077
mkdir -p "$data/data"
data_abs=$(cd "$data" && pwd)
conf="$data_abs/mosquitto.conf"
sed -e "s#/mosquitto/certs#$certs_abs#g" \
    -e "s#/mosquitto/data#$data_abs/data#g" \
    -e "s#^listener 8883\$#listener $port $bind#" \
    "$source_conf" >"$conf"
grep -q "^listener $port $bind\$" "$conf" || die "$source_conf has no 'listener 8883' line"
# As root mosquitto would switch to user 'mosquitto', who cannot read these 0600 files.
if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
echo "local-broker: mosquitto on $bind:$port (TLS) with $certs_abs; config $conf" >&2
exec mosquitto -c "$conf"
