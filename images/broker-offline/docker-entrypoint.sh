#!/bin/sh
# As eclipse-mosquitto's entrypoint: fix ownership when started as root, then exec.
set -e
if [ "$(id -u)" = "0" ]; then
    chown -R mosquitto:mosquitto /mosquitto || true
fi
exec "$@"
