#!/usr/bin/env bash
# Provision a Pi on the running stack: credentials + key + broker reload (no restart),
# and one bundle with what the Pi needs (CA certificate, password, key, broker URL).
# The bundle's URL is the server's LAN address (no mDNS needed) unless one is given.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: scripts/add-device.sh NAME [mqtts://HOST:PORT/BASE]"
    [[ $# -ge 1 ]] && exit 0 || exit 2
fi
name=$1
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh

if [[ -n ${2:-} ]]; then
    url=$2
else
    url=mqtts://$(broker_host):$MQTT_PORT_VALUE/$BASE_TOPIC
    echo "add-device: the bundle's broker URL is $url (this server's LAN address); for another, give URL=mqtts://HOST:PORT/BASE"
fi
case $MQTT_BIND_VALUE in
    127.*|::1|localhost)
        echo "add-device: warning: the broker listens only on $MQTT_BIND_VALUE (MQTT_BIND in .env): a Pi on the LAN cannot reach it; set MQTT_BIND=0.0.0.0 in .env, then make up" >&2 ;;
esac
scripts/admin.sh homewatch device add "$name" --bundle bundles --url "$url" --reload
cat <<NEXT

On the Pi ($name), see the README's "Adding a Raspberry Pi":
  scp bundles/$name.tar.gz pi@$name.local:
  then, as a service:  sudo scripts/install-pi.sh $name.tar.gz --known-devices FILE
  or to try it:        homewatch-publisher --credentials ~/.config/homewatch/$name
The bundle holds secrets: delete it on both sides once installed.
NEXT
