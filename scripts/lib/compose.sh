#!/usr/bin/env bash
# Shared by the stack scripts (sourced, not run): which Compose to use, the project name,
# the app image. `docker compose` (v2) is preferred; `docker-compose` 1.29 works too.
# shellcheck disable=SC2034

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
    COMPOSE_V1=0
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
    COMPOSE_V1=1
    # v1 builds with the classic builder through docker-py: no BuildKit front-end to pull.
    export COMPOSE_DOCKER_CLI_BUILD=${COMPOSE_DOCKER_CLI_BUILD:-0}
    export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
else
    echo "homewatch: error: Docker Compose is not installed (docker compose or docker-compose)" >&2
    exit 2
fi

# Settings from .env (as Compose reads them), unless already in the environment.
env_value() {
    local key=$1 default=$2 line
    if [[ -n ${!key:-} ]]; then printf '%s' "${!key}"; return; fi
    if [[ -f .env ]] && line=$(grep -E "^$key=" .env | tail -1); then
        printf '%s' "${line#*=}"; return
    fi
    printf '%s' "$default"
}

# Compose's own default project name: the directory name, lower case, [-_a-z0-9] only.
PROJECT=$(env_value COMPOSE_PROJECT_NAME "$(basename "$PWD" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')")
export COMPOSE_PROJECT_NAME=$PROJECT
IMAGE=$(env_value HOMEWATCH_IMAGE homewatch:local)
MQTT_PORT_VALUE=$(env_value MQTT_PORT 8883)
MQTT_BIND_VALUE=$(env_value MQTT_BIND 0.0.0.0)
BASE_TOPIC=$(env_value HOMEWATCH_BASE home)
DEMO_VALUE=$(env_value DEMO 1)
DASHBOARD_PORT_VALUE=$(env_value DASHBOARD_PORT 8443)
DASHBOARD_BIND_VALUE=$(env_value DASHBOARD_BIND 0.0.0.0)

# This server's LAN address, as Pis reach it: the address of the interface the default
# route leaves by (`ip route get` sends nothing); else the first non-loopback address;
# else <host>.local (needs mDNS).
lan_address() {
    local ip
    ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1) || true
    if [[ -z $ip ]]; then
        ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' | head -1) || true
    fi
    if [[ -n $ip ]]; then printf '%s' "$ip"; else printf '%s.local' "$(hostname -s 2>/dev/null || hostname)"; fi
}

# The host a Pi puts in its broker URL: the one address the broker listens on, else
# (all addresses, or loopback, which no Pi reaches) this server's LAN address.
broker_host() {
    case $MQTT_BIND_VALUE in
        0.0.0.0|::|''|127.*|::1|localhost) lan_address ;;
        *:*) printf '[%s]' "$MQTT_BIND_VALUE" ;;
        *) printf '%s' "$MQTT_BIND_VALUE" ;;
    esac
}

docker info >/dev/null 2>&1 || {
    echo "homewatch: error: cannot talk to the Docker daemon (is it running? are you in the docker group?)" >&2
    exit 2
}

# Wait until the containers of every service named are healthy: 0; 1 after TIMEOUT
# seconds, with their states on stderr. HEALTH_STATES holds the states last seen.
wait_healthy() {
    local timeout=$1 ids
    shift
    local deadline=$((SECONDS + timeout))
    while :; do
        ids=$("${COMPOSE[@]}" ps -q "$@")
        HEALTH_STATES=$(for id in $ids; do docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" || true; done)
        if [[ $(wc -w <<<"$ids") -eq $# ]] && ! grep -qv ' healthy$' <<<"$HEALTH_STATES"; then
            return 0
        fi
        if (( SECONDS > deadline )); then
            echo "$HEALTH_STATES" >&2
            return 1
        fi
        sleep 2
    done
}

# The host in the dashboard's URL: its one address, loopback's (a browser on this
# server), else this server's LAN address.
dashboard_host() {
    case $DASHBOARD_BIND_VALUE in
        0.0.0.0|::|'') lan_address ;;
        *:*) printf '[%s]' "$DASHBOARD_BIND_VALUE" ;;
        *) printf '%s' "$DASHBOARD_BIND_VALUE" ;;
    esac
}
