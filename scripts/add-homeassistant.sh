#!/usr/bin/env bash
# `make add-homeassistant`: connect Home Assistant to the running stack.
#   - makes the `homeassistant` identity if missing (an existing one keeps its password);
#     its ACL may only read the bridge's topics (homeassistant/#, homewatch/#);
#   - reloads the broker (SIGHUP: nobody is disconnected);
#   - switches the subscriber's Home Assistant bridge on (HOMEASSISTANT=1 in .env) and
#     recreates the subscriber with it;
#   - prints what to enter in Home Assistant's MQTT integration. The password is not
#     printed: it stays in its file (0600), to be pasted into Home Assistant's form.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "usage: scripts/add-homeassistant.sh   (make add-homeassistant; run while the stack is up)"
    exit 0
fi
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh
say() { echo "add-homeassistant: $*"; }

scripts/admin.sh homewatch homeassistant add --reload | sed 's/^/add-homeassistant: /'

# The bridge on for the stack, from now on (Compose reads .env at every `up`).
touch .env
if grep -qE '^HOMEASSISTANT=' .env; then
    sed -i 's/^HOMEASSISTANT=.*/HOMEASSISTANT=1/' .env
else
    if [[ -s .env && -n $(tail -c1 .env) ]]; then echo >>.env; fi
    echo "HOMEASSISTANT=1" >>.env
fi
say "HOMEASSISTANT=1 in .env: recreating the subscriber with the bridge on"
HOMEASSISTANT=1 "${COMPOSE[@]}" up -d --no-deps subscriber 2>&1 | sed 's/^/  /'
if ! wait_healthy "${UP_TIMEOUT:-120}" subscriber; then
    "${COMPOSE[@]}" logs --no-color --tail=20 subscriber >&2 || true
    say "error: the subscriber did not become healthy (its last log lines are above)" >&2
    exit 1
fi

host=$(broker_host)
case $MQTT_BIND_VALUE in
    127.*|::1|localhost)
        host=127.0.0.1  # (the broker's certificate names it)
        say "warning: the broker listens only on $MQTT_BIND_VALUE (MQTT_BIND in .env): only a Home Assistant on this server reaches it, at 127.0.0.1 as printed below; for one on the LAN, set MQTT_BIND=0.0.0.0 in .env, then make up" >&2 ;;
esac
mtls=""
if [[ $(env_value BROKER_CONF mosquitto.conf) == *mtls* ]]; then
    mtls="
    Client certificate:        upload certs/clients/homeassistant/client.crt
    Private key:               upload certs/clients/homeassistant/client.key"
fi
cat <<INFO

Home Assistant bridge is on. In Home Assistant: Settings > Devices & services >
Add integration > MQTT (choose "MQTT", not "MQTT (discovery)"), then enter:
  Broker:                      $host
  Port:                        $MQTT_PORT_VALUE
  Username:                    homeassistant
  Password:                    the line in certs/clients/homeassistant/password
                               (on this server: cat certs/clients/homeassistant/password)
  Advanced options:            on, then in the next form:
    Broker certificate validation: Custom; upload certs/ca.crt$mtls
    Ignore broker certificate validation: off
    MQTT protocol:             3.1.1
Discovery stays on with its prefix homeassistant (the default): each Pi appears as a
device (temperature, connectivity, scanner), each known person as a device tracker.
The bridge's states are plain text on the broker: see the README's Home Assistant section.
INFO
