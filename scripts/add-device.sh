#!/usr/bin/env bash
# Provision a Pi on the running stack: credentials + key + broker reload (no restart),
# and one bundle with what the Pi needs (CA certificate, password, key, broker URL).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: scripts/add-device.sh NAME [mqtts://HOST:PORT/BASE]"
    [[ $# -ge 1 ]] && exit 0 || exit 2
fi
name=$1
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh
url=${2:-mqtts://$(hostname -s 2>/dev/null || hostname).local:$MQTT_PORT_VALUE/$BASE_TOPIC}
scripts/admin.sh homewatch device add "$name" --bundle bundles --url "$url" --reload
cat <<NEXT

On the Pi ($name):
  scp bundles/$name.tar.gz pi@$name.local:
  ssh pi@$name.local 'mkdir -p ~/.config/homewatch && tar -xzf $name.tar.gz -C ~/.config/homewatch && rm $name.tar.gz'
  homewatch-publisher $url --credentials ~/.config/homewatch/$name
NEXT
