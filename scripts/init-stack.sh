#!/usr/bin/env bash
# The stack's one-shot `init` service (docker-compose.yml), so that a plain
# `docker compose up` works on a fresh clone: makes what is missing under certs/ and
# keeps what exists (idempotent):
#   - the private CA and the broker certificate (scripts/gen-certs.sh), naming this
#     server by its host name and IP addresses (the service shares the host's network
#     namespace to learn them; it opens no connection);
#   - the subscriber, health-check and demo identities (homewatch server init);
#   - group ownership for the broker (1883) and the app containers (10001); every file
#     stays owned by whoever owns certs/ on the host;
# and says where the dashboard is and where its password is (never the password), so
# that `docker compose logs init` tells a plain `docker compose up` what `make up` prints.
# Runs as root inside the app image, with ./certs mounted at /work/certs.
set -euo pipefail
cd "$(dirname "$0")/.."  # /opt/homewatch in the image

certs=${HOMEWATCH_CERTS_DIR:-/work/certs}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "usage: init-stack.sh   (the Compose init service; settings: DEMO, DEMO_DEVICE," \
         "DASHBOARD_BIND, DASHBOARD_PORT)"
    exit 0
fi
[[ -d $certs ]] || { echo "init: error: $certs is not mounted" >&2; exit 2; }
owner=$(stat -c %u "$certs")
chmod 700 "$certs"
trap 'chown -R "$owner" "$certs"' EXIT  # whatever happens, nothing stays root's
case ${DEMO:-1} in
    0|1) ;;
    *) echo "init: error: DEMO must be 1 (the demo publisher) or 0 (none), not '$DEMO'" >&2
       exit 2 ;;
esac

# From certs/'s parent, so that what gen-certs.sh prints reads as on the host (certs/...).
# The certificate names this server's host name and addresses (host network namespace).
(cd "$(dirname "$certs")" && bash "$OLDPWD/scripts/gen-certs.sh" \
    --out "$(basename "$certs")" --broker-gid 1883) \
    | sed -n -e '/^gen-certs: made/p' -e '/subjectAltNames/p'

demo=()
if [[ ${DEMO:-1} == 1 ]]; then demo=(--demo-device "${DEMO_DEVICE:-demo-pi}"); fi
homewatch server init --app-gid 10001 "${demo[@]+"${demo[@]}"}" | sed 's/^/init: identities: /'
# The alerts file (optional; it may hold a secret webhook URL): readable by the
# subscriber's group only, whatever the editor that wrote it left.
alerts="$certs/clients/subscriber/alerts.toml"
if [[ -f $alerts ]]; then
    chgrp 10001 "$alerts" && chmod 640 "$alerts"
    echo "init: alerts file certs/clients/subscriber/alerts.toml: 0640 to the app group"
fi
# DASHBOARD_BIND and DASHBOARD_PORT as Compose publishes the dashboard; the URL's host as
# `make up` finds it (this server's LAN address: the host's network namespace).
# (What it says is for people: a failure here is reported, never fatal to the stack.)
(cd "$(dirname "$certs")" && homewatch --certs "$(basename "$certs")" dashboard url) \
    | sed 's/^/init: /' || echo "init: dashboard: its address could not be worked out (see above)"
echo "init: certs/ ready"
