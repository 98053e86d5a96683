#!/usr/bin/env bash
# Run the admin CLI inside the app image, so the server needs nothing but Docker:
#   scripts/admin.sh homewatch device add pi-kitchen --bundle bundles --url mqtts://...
#   scripts/admin.sh gen-certs [gen-certs.sh options]
# Runs as root in a throw-away container (it must give files to the broker's and the app
# containers' groups), then hands every file back to you (your uid). The container works
# in /work, this repository's certs/ and bundles/ mounted there, with relative paths: what
# it prints (certs/ca.crt, bundles/NAME.tar.gz) is what you find here.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
    echo "usage: scripts/admin.sh homewatch ARGS... | gen-certs ARGS... | doctor [ARGS...]"
    exit 0
fi
# shellcheck source=scripts/lib/compose.sh
source scripts/lib/compose.sh

docker image inspect "$IMAGE" >/dev/null 2>&1 || "${COMPOSE[@]}" build subscriber >&2

mkdir -p certs bundles
chmod 700 certs bundles
network=none
if [[ $1 == doctor || " $* " == *" --reload "* ]]; then
    sock=/var/run/docker.sock
    if [[ ${DOCKER_HOST:-} == unix://* ]]; then sock=${DOCKER_HOST#unix://}; fi
fi
# doctor probes the broker's published port; gen-certs names this server's host name and
# addresses in the broker certificate (it opens no connection)
[[ $1 == doctor || $1 == gen-certs ]] && network=host
args=(--rm --user 0:0 --read-only --tmpfs /tmp --network "$network"
      --cap-drop ALL --cap-add CHOWN --cap-add FOWNER --cap-add FSETID --cap-add DAC_OVERRIDE
      -v "$PWD/certs:/work/certs" -v "$PWD/bundles:/work/bundles" -w /work
      -e "HOST_UID=$(id -u)" -e "COMPOSE_PROJECT_NAME=$PROJECT"
      -e "HOMEWATCH_CERTS_DIR=certs" -e "HOMEWATCH_BASE=$BASE_TOPIC")
if [[ -n ${sock:-} ]]; then args+=(-v "$sock:/var/run/docker.sock"); fi
# `homewatch dashboard password --stdin` reads the new password from standard input
if [[ " $* " == *" --stdin "* ]]; then args+=(-i); fi
case "$1" in
    homewatch)
        cmd=("$@") ;;
    doctor)
        shift
        args+=(-v "$PWD/broker:/work/broker:ro" -e "MQTT_PORT=$MQTT_PORT_VALUE"
               -e "BROKER_CONF=$(env_value BROKER_CONF mosquitto.conf)")
        cmd=(homewatch doctor "$@") ;;
    gen-certs)
        shift
        cmd=(bash /opt/homewatch/scripts/gen-certs.sh --out certs "$@") ;;
    *) echo "admin: error: unknown command $1 (homewatch, gen-certs or doctor)" >&2; exit 2 ;;
esac
# shellcheck disable=SC2016
docker run "${args[@]}" --entrypoint /bin/bash "$IMAGE" -c \
    '"$@"; rc=$?; chown -R "$HOST_UID" certs bundles; exit $rc' admin "${cmd[@]}"
