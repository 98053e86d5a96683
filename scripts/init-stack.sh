#!/usr/bin/env bash
# The stack's one-shot `init` service (docker-compose.yml), so that a plain
# `docker compose up` works on a fresh clone: makes what is missing under certs/ and
# keeps what exists (idempotent):
#   - the private CA and the broker certificate (scripts/gen-certs.sh), naming this
#     server by its host name and IP addresses (the service shares the host's network
#     namespace to learn them; it opens no connection);
#   - the subscriber, health-check and demo identities (homewatch server init);
#   - group ownership for the broker (1883) and the app containers (10001); every file
#     stays owned by whoever owns certs/ on the host.
# Runs as root inside the app image, with ./certs mounted at /work/certs.
set -euo pipefail
cd "$(dirname "$0")/.."  # /opt/homewatch in the image

certs=${HOMEWATCH_CERTS_DIR:-/work/certs}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "usage: init-stack.sh   (the Compose init service; settings: DEMO, DEMO_DEVICE)"
    exit 0
fi
[[ -d $certs ]] || { echo "init: error: $certs is not mounted" >&2; exit 2; }
owner=$(stat -c %u "$certs")
chmod 700 "$certs"

sans=()
for ip in $(hostname -I 2>/dev/null || true); do sans+=(--san "$ip"); done
# From certs/'s parent, so that what gen-certs.sh prints reads as on the host (certs/...).
(cd "$(dirname "$certs")" && GEN_CERTS_HOSTNAME=$(hostname -s 2>/dev/null || hostname) \
    bash "$OLDPWD/scripts/gen-certs.sh" --out "$(basename "$certs")" --broker-gid 1883 \
    "${sans[@]+"${sans[@]}"}") | sed -n -e '/^gen-certs: made/p' -e '/subjectAltNames/p'

demo=()
if [[ ${DEMO:-1} != 0 ]]; then demo=(--demo-device "${DEMO_DEVICE:-demo-pi}"); fi
homewatch server init --app-gid 10001 "${demo[@]+"${demo[@]}"}" | sed 's/^/init: identities: /'

chown -R "$owner" "$certs"
echo "init: certs/ ready"
