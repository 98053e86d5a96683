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

docker info >/dev/null 2>&1 || {
    echo "homewatch: error: cannot talk to the Docker daemon (is it running? are you in the docker group?)" >&2
    exit 2
}
