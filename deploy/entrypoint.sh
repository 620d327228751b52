#!/bin/sh
# The IPJMS image's entrypoint: the first argument selects the role, the rest are passed to the
# role's `ipjms` command unchanged. Configuration comes from the environment (no secret is ever
# written into the image or the compose/k8s files; files holding secrets are mounted at run time).
#
#   node           ipjms node init (first start only) + ipjms node serve
#   coordinator    ipjms coordinator serve
#   consent        ipjms consent serve
#   superlink      ipjms fl superlink
#   supernode      ipjms fl supernode
#   pki-bootstrap  one-shot: regional CA, one certificate per organisation, the linkage key
#   healthcheck    used by HEALTHCHECK: GET $IPJMS_HEALTH_URL (default http://127.0.0.1:$IPJMS_PORT/healthz)
#   ipjms ...      any other ipjms command (e.g. `ipjms audit verify`, migrations, backups)
#
# Environment common to the service roles:
#   IPJMS_DATA_DIR           state directory (default /data)
#   IPJMS_PORT               HTTP port (default 8080); the container listens on 0.0.0.0
#   IPJMS_DB_URL             postgresql://USER@HOST:5432/DB (no password in the URL)
#   IPJMS_DB_PASSWORD_FILE   file holding the database password; exported as PGPASSWORD, which
#                            libpq (psycopg 3) uses when the URL carries no password
#   IPJMS_ORG_DIR            this organisation's credentials (certificate, keys, CA certificate)
#   IPJMS_CA_DIR             the regional CA's public part (ca certificate, revocation list)
set -eu

role="${1:---help}"
[ "$#" -gt 0 ] && shift

DATA_DIR="${IPJMS_DATA_DIR:-/data}"
PORT="${IPJMS_PORT:-8080}"

# Build "--db URL" only when a URL is configured (otherwise the service uses SQLite in DATA_DIR).
db_args() {
    if [ -n "${IPJMS_DB_URL:-}" ]; then
        printf '%s\n' "--db" "$IPJMS_DB_URL"
    fi
}

load_db_password() {
    if [ -n "${IPJMS_DB_PASSWORD_FILE:-}" ]; then
        if [ ! -r "$IPJMS_DB_PASSWORD_FILE" ]; then
            echo "ipjms-entrypoint: IPJMS_DB_PASSWORD_FILE=$IPJMS_DB_PASSWORD_FILE is not readable" >&2
            exit 64
        fi
        PGPASSWORD="$(cat "$IPJMS_DB_PASSWORD_FILE")"
        export PGPASSWORD
    fi
}

require() {
    eval "value=\${$1:-}"
    if [ -z "$value" ]; then
        echo "ipjms-entrypoint: $role needs $1" >&2
        exit 64
    fi
}

case "$role" in
node)
    require IPJMS_NODE_ORG_ID
    load_db_password
    # NodeSettings reads IPJMS_NODE_* itself (org_id, name, level, host, public_url, ...).
    export IPJMS_NODE_HOST="${IPJMS_NODE_HOST:-0.0.0.0}"
    if [ ! -f "$DATA_DIR/node.toml" ]; then
        # shellcheck disable=SC2046
        ipjms node init --org "$IPJMS_NODE_ORG_ID" --name "${IPJMS_NODE_NAME:-$IPJMS_NODE_ORG_ID}" \
            --level "${IPJMS_NODE_LEVEL:-community}" --data-dir "$DATA_DIR" $(db_args)
    fi
    # shellcheck disable=SC2046
    exec ipjms node serve --data-dir "$DATA_DIR" --port "$PORT" $(db_args) "$@"
    ;;
coordinator)
    load_db_password
    # shellcheck disable=SC2046
    exec ipjms coordinator serve --data-dir "$DATA_DIR" --port "${IPJMS_GRPC_PORT:-50051}" \
        --http-port "$PORT" $(db_args) "$@"
    ;;
consent)
    load_db_password
    # shellcheck disable=SC2046
    exec ipjms consent serve --data-dir "$DATA_DIR" --port "$PORT" $(db_args) "$@"
    ;;
superlink)
    exec ipjms fl superlink "$@"
    ;;
supernode)
    exec ipjms fl supernode "$@"
    ;;
pki-bootstrap)
    # Idempotent: an existing CA, certificate or linkage key is kept, so re-running `up` after a
    # restart never re-keys the region (rotation is a deliberate operator step, see trust/README.md).
    # IPJMS_PKI_ORGS: space-separated ORG=HOST pairs, e.g. "org-a=node-a org-b=node-b"
    # IPJMS_DB_SECRETS: space-separated database names that get a generated password
    require IPJMS_PKI_ORGS
    ca_dir="${IPJMS_PKI_CA_DIR:-/pki/ca}"
    orgs_dir="${IPJMS_PKI_ORGS_DIR:-/pki/orgs}"
    linkage_dir="${IPJMS_PKI_LINKAGE_DIR:-/pki/linkage}"
    secrets_dir="${IPJMS_PKI_SECRETS_DIR:-/pki/secrets}"
    umask 077
    mkdir -p "$ca_dir" "$orgs_dir" "$linkage_dir" "$secrets_dir"
    if [ -z "$(ls -A "$ca_dir")" ]; then
        ipjms pki init-ca "$ca_dir"
    fi
    for pair in $IPJMS_PKI_ORGS; do
        org="${pair%%=*}"
        host="${pair#*=}"
        if [ ! -d "$orgs_dir/$org" ] || [ -z "$(ls -A "$orgs_dir/$org")" ]; then
            ipjms pki issue "$ca_dir" --org "$org" --host "$host" --out "$orgs_dir/$org"
        fi
    done
    # One random password per database (a directory each, so a container mounts only its own).
    for name in ${IPJMS_DB_SECRETS:-}; do
        if [ ! -s "$secrets_dir/$name/password" ]; then
            mkdir -p "$secrets_dir/$name"
            python -c "import secrets; print(secrets.token_urlsafe(32))" >"$secrets_dir/$name/password"
        fi
    done
    # The regional linkage key (HMAC key for patient pseudonyms): the same for every node, never
    # given to the coordinator or the consent registry.
    python -c "import sys; from trust.pseudonym import load_or_create_linkage_key as k; k(sys.argv[1])" \
        "$linkage_dir/linkage.key"
    echo "ipjms-entrypoint: PKI ready (CA in $ca_dir, organisations: $IPJMS_PKI_ORGS)"
    ;;
healthcheck)
    if [ -n "${IPJMS_HEALTH_TCP:-}" ]; then   # host:port, for the Flower roles (gRPC only)
        exec python -c "import socket, sys; h, p = sys.argv[1].rsplit(':', 1); socket.create_connection((h, int(p)), 4).close()" "$IPJMS_HEALTH_TCP"
    fi
    url="${IPJMS_HEALTH_URL:-http://127.0.0.1:$PORT/healthz}"
    exec python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4).read()" "$url"
    ;;
ipjms)
    load_db_password
    exec ipjms "$@"
    ;;
-h | --help | help)
    sed -n '2,21p' "$0"
    ;;
*)
    echo "ipjms-entrypoint: unknown role '$role' (node|coordinator|consent|superlink|supernode|pki-bootstrap|healthcheck|ipjms)" >&2
    exit 64
    ;;
esac
