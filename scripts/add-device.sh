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

On the Pi ($name), see the README's "Adding a Raspberry Pi":
  scp bundles/$name.tar.gz pi@$name.local:
  then, as a service:  sudo scripts/install-pi.sh $name.tar.gz --known-devices FILE
  or to try it:        homewatch-publisher --credentials ~/.config/homewatch/$name
The bundle holds secrets: delete it on both sides once installed.
NEXT
