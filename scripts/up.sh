#!/usr/bin/env bash
# `make up`: build the image, start the stack (its init service makes what is missing:
# CA, broker and dashboard certificates, identities, the dashboard password), wait until
# every service is healthy, and say where things are. Running it again keeps the existing CA and credentials.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "usage: scripts/up.sh   (make up; settings in .env: MQTT_BIND, MQTT_PORT, COMPOSE_PROJECT_NAME, ...)"
    exit 0
fi
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh
say() { echo "homewatch: $*"; }

say "building the app image ($IMAGE)"
"${COMPOSE[@]}" build --quiet subscriber >/dev/null 2>&1 || "${COMPOSE[@]}" build subscriber

say "starting the stack (project $PROJECT); its init service makes what is missing in certs/"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
init_log() {  # what the init service said during this `up`
    local id
    id=$("${COMPOSE[@]}" ps -a -q init)
    [[ -n $id ]] && docker logs --since "$started" "$id" 2>&1
}
if ! "${COMPOSE[@]}" up -d --remove-orphans; then
    init_log >&2 || true
    say "error: the stack did not start; see the lines above" >&2
    exit 1
fi
# (init's own dashboard line is for plain `docker compose up`: the summary below says it)
init_log | sed -e '/^init: certs\/ ready/d' -e '/^init: dashboard: /d' -e 's/^init: /homewatch: /'

services=(broker subscriber dashboard)
if [[ $DEMO_VALUE != 0 ]]; then services+=(publisher); fi
say "waiting until every service is healthy (${services[*]})"
if ! wait_healthy "${UP_TIMEOUT:-180}" "${services[@]}"; then
    "${COMPOSE[@]}" logs --no-color --tail=20 "${services[@]}" >&2 || true
    say "error: the stack did not become healthy (the last log lines are above; more: make logs)" >&2
    exit 1
fi
echo "$HEALTH_STATES" | sed 's/^\//  /'

host=$(broker_host)
cat <<INFO

Homewatch is up.
  Dashboard:       https://$(dashboard_host):$DASHBOARD_PORT_VALUE/  (listening on $DASHBOARD_BIND_VALUE:$DASHBOARD_PORT_VALUE)
    password:      certs/dashboard/password  (new one: make dashboard-password)
    trust:         import certs/dashboard-ca.crt into your browser or phone (see the README)
  Broker:          mqtts://$host:$MQTT_PORT_VALUE/$BASE_TOPIC  (TLS, listening on $MQTT_BIND_VALUE:$MQTT_PORT_VALUE)
  CA certificate:  certs/ca.crt
  Follow readings: make logs        (or: ${COMPOSE[*]} logs -f subscriber)
  Add a Pi:        make add-device NAME=pi-kitchen
  Stop:            make down
INFO
