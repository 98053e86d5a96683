#!/usr/bin/env bash
# Make the project CA and the broker's TLS certificate.
#
# Idempotent: an existing CA is kept (it is what every client trusts); only what is
# missing is made. --force replaces the CA and everything signed by it.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/.."

usage() {
    cat <<'USAGE'
usage: scripts/gen-certs.sh [--out DIR] [--san NAME|IP ...] [--days N] [--broker-gid GID]
                            [--renew-server] [--force]

Makes DIR/ca.crt + DIR/ca.key (the private CA that Pis trust), DIR/broker/server.{crt,key}
(the broker certificate), DIR/dashboard-ca.{crt,key} (a CA for browsers only) and
DIR/dashboard/server.{crt,key} (the dashboard's HTTPS certificate, for the same names as
the broker's, signed by the dashboard's CA) in DIR (default: certs).

  --out DIR         where to write (default: certs)
  --san VALUE       extra subjectAltName for the server certificates; repeatable.
                    A bare IP becomes IP:..., anything else DNS:... ("DNS:x"/"IP:y" as is).
                    Always included: localhost, 127.0.0.1, ::1, broker (dashboard), this host's name
                    (and NAME.local) and its IP addresses.
  --days N          server certificates' validity in days (default 825)
  --broker-gid GID  make the broker's files group-readable by GID (1883 in the official
                    Mosquitto image), never world-readable
  --renew-server    reissue the server certificates with the existing CA, naming what
                    they named and the --san values (more names, never fewer)
  --force           replace the existing CAs: every client must get the new ca.crt,
                    every browser the new dashboard-ca.crt
USAGE
}

die() { echo "gen-certs: error: $*" >&2; exit 2; }
# A path as the caller sees it: relative to the directory they ran us from, when inside it
# (through scripts/admin.sh that is the repository: certs/ca.crt, not /work/certs/ca.crt).
shown() {
    local p=$1
    [[ $p == /* ]] || p="$PWD/$p"
    if [[ $p == "$caller_pwd"/* ]]; then p=${p#"$caller_pwd"/}; fi
    printf '%s' "$p"
}

out=certs
days=825
force=0
renew=0
broker_gid=""
extra_sans=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"
               out=$2; [[ $out == /* ]] || out="$caller_pwd/$out"; shift 2 ;;
        --san) [[ $# -ge 2 ]] || die "--san needs a value"; extra_sans+=("$2"); shift 2 ;;
        --days) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--days needs a number"; days=$2; shift 2 ;;
        --broker-gid) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--broker-gid needs a number"
                      broker_gid=$2; shift 2 ;;
        --renew-server) renew=1; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
umask 077
mkdir -p "$out/broker" "$out/dashboard"
ca_key="$out/ca.key"; ca_crt="$out/ca.crt"
srv_key="$out/broker/server.key"; srv_crt="$out/broker/server.crt"
web_key="$out/dashboard/server.key"; web_crt="$out/dashboard/server.crt"
# The dashboard's certificate comes from a CA of its own: browsers trust it, Pis never do,
# so the LAN-facing dashboard's key cannot pose as the broker to a Pi.
wca_key="$out/dashboard-ca.key"; wca_crt="$out/dashboard-ca.crt"

san_entry() {
    local v=$1
    case "$v" in
        DNS:*|IP:*) printf '%s' "$v" ;;
        *) if [[ $v =~ ^[0-9.]+$ || $v == *:* ]]; then printf 'IP:%s' "$v"; else printf 'DNS:%s' "$v"; fi ;;
    esac
}

if [[ -e $ca_crt || -e $ca_key ]]; then
    if [[ $force -eq 1 ]]; then
        echo "gen-certs: --force: replacing the CA in $(shown "$out") (clients need the new ca.crt)"
        rm -f "$ca_crt" "$ca_key" "$srv_crt" "$srv_key" "$out/broker/ca.crt" "$web_crt" "$web_key" \
              "$wca_crt" "$wca_key"
    else
        [[ -e $ca_crt && -e $ca_key ]] || die "$(shown "$out") has only half a CA (ca.crt/ca.key); fix it or use --force"
        echo "gen-certs: keeping the existing CA in $(shown "$out") (use --force to replace it)"
    fi
fi

make_ca() {  # $1 key, $2 certificate, $3 common name
    openssl ecparam -name prime256v1 -genkey -noout -out "$1"
    openssl req -x509 -new -sha256 -key "$1" -days 3650 -out "$2" \
        -subj "/O=Homewatch/CN=$3 $(date -u +%Y-%m-%d)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

if [[ ! -e $ca_crt ]]; then
    make_ca "$ca_key" "$ca_crt" "Homewatch private CA"
    echo "gen-certs: made CA $(shown "$ca_crt")"
fi
if [[ ! -e $wca_crt || ! -e $wca_key ]]; then
    make_ca "$wca_key" "$wca_crt" "Homewatch dashboard CA"
    rm -f "$web_crt" "$web_key"  # whatever signed them, it is not this new CA
    echo "gen-certs: made the dashboard's CA $(shown "$wca_crt") (for browsers only)"
elif [[ -e $web_crt ]] && ! openssl verify -CAfile "$wca_crt" "$web_crt" >/dev/null 2>&1; then
    rm -f "$web_crt" "$web_key"  # signed by another CA (the project's, before): reissue
fi

ipv6_short() {  # an IPv6 address as openssl prints it (FD00:0:0:0:0:0:0:2) -> fd00::2
    local IFS=: g i run=0 start=0 best=0 bestlen=0
    local -a groups=()
    read -ra g <<<"${1,,}"
    for i in "${!g[@]}"; do groups+=("$(printf '%x' "$((16#${g[i]}))")"); done
    for i in "${!groups[@]}"; do
        if [[ ${groups[i]} == 0 ]]; then
            [[ $run -eq 0 ]] && start=$i
            run=$((run + 1))
            if [[ $run -gt $bestlen ]]; then bestlen=$run; best=$start; fi
        else
            run=0
        fi
    done
    if [[ $bestlen -ge 2 ]]; then
        printf '%s::%s' "${groups[*]:0:best}" "${groups[*]:best+bestlen}"
    else
        printf '%s' "${groups[*]}"
    fi
}

if [[ $renew -eq 1 ]]; then
    # More names, not other names: what the current certificates name (a name added by an
    # earlier --san, an address this host no longer has) is named again, beside the new.
    for c in "$srv_crt" "$web_crt"; do
        [[ -e $c ]] || continue
        while read -r s; do
            case "$s" in
                DNS:localhost|DNS:broker|DNS:dashboard|"IP Address:127.0.0.1") ;;
                "IP Address:0:0:0:0:0:0:0:1"|"IP Address:::1") ;;
                DNS:*) extra_sans+=("$s") ;;
                "IP Address:"*:*) extra_sans+=("IP:$(ipv6_short "${s#IP Address:}")") ;;
                "IP Address:"*) extra_sans+=("IP:${s#IP Address:}") ;;
            esac
        done < <(openssl x509 -in "$c" -noout -ext subjectAltName 2>/dev/null \
                 | tail -n +2 | tr ',' '\n' | sed 's/^ *//')
    done
    rm -f "$srv_crt" "$srv_key" "$web_crt" "$web_key"
fi

# The server certificates (the broker's and the dashboard's) name the same host: this
# host's name and addresses, so that Pis and browsers reach it without mDNS or DNS.
server_sans() {  # $1: the service's name on the Compose network
    local host_short sans s ip
    host_short=${GEN_CERTS_HOSTNAME:-$(hostname -s 2>/dev/null || hostname)}
    sans=("DNS:localhost" "IP:127.0.0.1" "IP:::1" "DNS:$1")
    [[ -n $host_short && $host_short != localhost ]] && sans+=("DNS:$host_short" "DNS:$host_short.local")
    for ip in $(hostname -I 2>/dev/null || true); do sans+=("$(san_entry "$ip")"); done
    for s in "${extra_sans[@]+"${extra_sans[@]}"}"; do sans+=("$(san_entry "$s")"); done
    printf '%s\n' "${sans[@]}" | awk '!seen[$0]++' | paste -sd, -
}

issue_server() {  # $1 service name, $2 key, $3 certificate, $4 CA certificate, $5 CA key
    local san_list ext csr
    san_list=$(server_sans "$1")
    ext=$(mktemp); csr=$(mktemp)
    cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san_list
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
    openssl ecparam -name prime256v1 -genkey -noout -out "$2"
    openssl req -new -sha256 -key "$2" -subj "/O=Homewatch/CN=homewatch-$1" -out "$csr"
    openssl x509 -req -sha256 -in "$csr" -CA "$4" -CAkey "$5" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$ext" \
        -out "$3" 2>/dev/null
    rm -f "$ext" "$csr"
    echo "gen-certs: made $1 certificate $(shown "$3")"
    echo "           subjectAltNames: $san_list"
}

if [[ ! -e $srv_crt || ! -e $srv_key ]]; then
    issue_server broker "$srv_key" "$srv_crt" "$ca_crt" "$ca_key"
fi
if [[ ! -e $web_crt || ! -e $web_key ]]; then
    issue_server dashboard "$web_key" "$web_crt" "$wca_crt" "$wca_key"
fi
cp "$ca_crt" "$out/broker/ca.crt"

chmod 600 "$ca_key" "$srv_key" "$web_key" "$wca_key"
chmod 644 "$ca_crt" "$srv_crt" "$out/broker/ca.crt" "$web_crt" "$wca_crt"
if [[ -n $broker_gid ]]; then
    # Shared with the broker's group (setgid: files made here later inherit the group).
    chgrp -R "$broker_gid" "$out/broker" || die "cannot give $(shown "$out")/broker to group $broker_gid (run as root, or through scripts/admin.sh)"
    find "$out/broker" -type d -exec chmod 2750 {} +
fi
if [[ -g $out/broker ]]; then
    find "$out/broker" -type f ! -name '*.crt' -exec chmod 640 {} +
fi
# Shared with the dashboard's group by `homewatch server init --app-gid` (the password
# in there stays 0600: only the certificate and key are touched).
if [[ -g $out/dashboard ]]; then
    chgrp "$(stat -c %g "$out/dashboard")" "$web_key" "$web_crt" 2>/dev/null || true
    chmod 640 "$web_key"
fi

for c in "$ca_crt" "$srv_crt" "$wca_crt" "$web_crt"; do
    echo "  $(shown "$c")"
    openssl x509 -in "$c" -noout -subject -enddate -fingerprint -sha256 | sed 's/^/    /'
done
