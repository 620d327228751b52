#!/bin/sh
# The IPJMS image's entrypoint: the first argument selects the role, the rest are passed to the
# role's `ipjms` command unchanged. Configuration comes from the environment (no secret is ever
# written into the image or the compose/k8s files; files holding secrets are mounted at run time).
#
#   node           ipjms node init (first start only) + ipjms node serve
#   coordinator    ipjms coordinator serve
#   consent        ipjms consent serve
#   superlink      ipjms fl superlink (TLS + SuperNode authentication)
#   supernode      ipjms fl supernode (trains on the node's store via its FHIR API)
#   pseudonym      ipjms pseudonym serve: the pseudonymisation authority (RFC 9497 OPRF); its OPRF
#                  key is made by the service itself, in its own data folder, at first start
#   pki-bootstrap  one-shot: regional CA, one credential set per organisation, directory entries,
#                  generated passwords and SuperNode client key pairs (no pseudonym key: nodes
#                  ask the pseudonymisation authority, which holds its key alone)
#   migrate        one-shot: ipjms migrate --service node|consent|coordinator (IPJMS_DB_URL), the
#                  schema brought to head under the database's migration lock (pre-upgrade Job)
#   healthcheck    used by HEALTHCHECK: GET $IPJMS_HEALTH_URL (default http://127.0.0.1:$IPJMS_PORT/healthz;
#                  https with IPJMS_HTTP_TLS=1: chain checked against SSL_CERT_FILE, its own
#                  loopback address not matched against the certificate's names)
#   ipjms ...      any other ipjms command (e.g. `ipjms audit verify`, `ipjms coordinator orgs`)
#
# Environment common to the service roles:
#   IPJMS_DATA_DIR           state directory (default /data)
#   IPJMS_PORT               HTTP port (default 8080)
#   IPJMS_LISTEN_HOST        listen address (default 0.0.0.0, every interface of the container)
#   IPJMS_DB_URL             postgresql://USER@HOST:5432/DB?sslmode=verify-full&sslrootcert=FILE
#                            (no password in the URL; TLS parameters are libpq's)
#   IPJMS_DB_PASSWORD_FILE   file holding the database password: read by the service at every new
#                            connection (servicekit.storage), never exported into the environment,
#                            so a rotated Secret is used without a restart
#   IPJMS_HTTP_TLS           "1": node, consent and the coordinator's status API serve HTTPS with
#                            IPJMS_ORG_DIR/tls.cert.pem + tls.key.pem; clients trust the regional
#                            CA through SSL_CERT_FILE (set it to IPJMS_CA_DIR/ca.cert.pem)
#   IPJMS_ORG_DIR            this organisation's credentials (certificate, keys, CA certificate)
#   IPJMS_CA_DIR             the regional CA's public part (ca certificate, revocation list)
#   IPJMS_ADMIN_PASSWORD_FILE  node: the first admin's password (used by `node init` only)
#   IPJMS_CONSENT_URL        coordinator: the consent registry
#   IPJMS_DIRECTORY_CONFIG   coordinator: organisations to register before serving (one TOML)
#   IPJMS_DIRECTORY_DIR      coordinator: or a folder of ORG/directory.toml + ORG's public certs
#   IPJMS_PUBLIC_URL         consent, pseudonym: its public base URL (the assertions' audience)
#   IPJMS_NODE_PSEUDONYM_URL node, supernode: the pseudonymisation authority (required: a packaged
#                            node holds no linkage key)
#   IPJMS_PSEUDONYM_ALLOW    pseudonym: the organisations (the region's nodes) that may evaluate;
#                            IPJMS_PSEUDONYM_BUDGET_PER_HOUR / _BURST, IPJMS_PSEUDONYM_ORG_ID are
#                            read by the service itself (trust/oprf_service.py)
#   IPJMS_FL_CLIENT_PUBLIC_KEY_FILE node: register the SuperNode's backend client key (first start)
#   IPJMS_FL_AUTHORIZE, IPJMS_DIRECTORY_DIR  superlink: organisations whose SuperNodes it admits
#   IPJMS_SUPERLINK_ADDRESS, IPJMS_FHIR_URL, IPJMS_FL_CLIENT_KEY_FILE, IPJMS_AUTHORITY_ORG  supernode
#   IPJMS_FL_HEARTBEAT_INTERVAL  supernode: seconds between its heartbeats, 10-1800 (default 30,
#                            Flower's); the SuperLink takes it offline after twice that
set -eu

role="${1:---help}"
[ "$#" -gt 0 ] && shift

DATA_DIR="${IPJMS_DATA_DIR:-/data}"
PORT="${IPJMS_PORT:-8080}"
# Listen on every interface inside a container; tests on a shared host use 127.0.0.1.
LISTEN_HOST="${IPJMS_LISTEN_HOST:-0.0.0.0}"

# Build "--db URL" only when a URL is configured (otherwise the service uses SQLite in DATA_DIR).
db_args() {
    if [ -n "${IPJMS_DB_URL:-}" ]; then
        printf '%s\n' "--db" "$IPJMS_DB_URL"
    fi
}

# The password file is only checked here; the service reads it per connection.
check_db_password() {
    if [ -n "${IPJMS_DB_PASSWORD_FILE:-}" ] && [ ! -r "$IPJMS_DB_PASSWORD_FILE" ]; then
        echo "ipjms-entrypoint: IPJMS_DB_PASSWORD_FILE=$IPJMS_DB_PASSWORD_FILE is not readable" >&2
        exit 64
    fi
}

# "--tls-cert C --tls-key K" from this organisation's credentials when IPJMS_HTTP_TLS=1.
tls_args() {
    if [ "${IPJMS_HTTP_TLS:-0}" = "1" ]; then
        require IPJMS_ORG_DIR
        printf '%s\n' "--tls-cert" "$IPJMS_ORG_DIR/tls.cert.pem" "--tls-key" "$IPJMS_ORG_DIR/tls.key.pem"
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
    # pseudonyms come from the region's authority: with the URL set, `node init` makes no
    # linkage key and the node holds nothing that could test a guessed identifier
    require IPJMS_NODE_PSEUDONYM_URL
    check_db_password
    # NodeSettings reads IPJMS_NODE_* itself (public_url, pseudonym_url, consent_url,
    # coordinator_address, ...); the mounted credentials are handed over under its names.
    if [ -n "${IPJMS_ORG_DIR:-}" ]; then
        export IPJMS_NODE_ORG_CREDENTIALS_DIR="${IPJMS_NODE_ORG_CREDENTIALS_DIR:-$IPJMS_ORG_DIR}"
    fi
    if [ -n "${IPJMS_CA_DIR:-}" ]; then
        export IPJMS_NODE_CA_DIR="${IPJMS_NODE_CA_DIR:-$IPJMS_CA_DIR}"
    fi
    if [ ! -f "$DATA_DIR/node.toml" ]; then
        # The first admin's password comes from a mounted file, never from the logs.
        if [ -n "${IPJMS_ADMIN_PASSWORD_FILE:-}" ]; then
            IPJMS_ADMIN_PASSWORD="$(cat "$IPJMS_ADMIN_PASSWORD_FILE")"
            export IPJMS_ADMIN_PASSWORD
        fi
        # shellcheck disable=SC2046
        ipjms node init --org "$IPJMS_NODE_ORG_ID" --name "${IPJMS_NODE_NAME:-$IPJMS_NODE_ORG_ID}" \
            --level "${IPJMS_NODE_LEVEL:-community}" --data-dir "$DATA_DIR" --port "$PORT" $(db_args)
        unset IPJMS_ADMIN_PASSWORD
        # The node's SuperNode reads the store as a SMART backend client: register its public key.
        if [ -n "${IPJMS_FL_CLIENT_PUBLIC_KEY_FILE:-}" ]; then
            # shellcheck disable=SC2046
            ipjms node client add --data-dir "$DATA_DIR" --client-id "${IPJMS_FL_CLIENT_ID:-fl-supernode}" \
                --public-key "$IPJMS_FL_CLIENT_PUBLIC_KEY_FILE" \
                --scope "system/*.rs system/RiskAssessment.c" $(db_args)
        fi
    fi
    # shellcheck disable=SC2046
    exec ipjms node serve --data-dir "$DATA_DIR" --host "$LISTEN_HOST" --port "$PORT" $(db_args) $(tls_args) "$@"
    ;;
coordinator)
    check_db_password
    # The organisations the authority admits (TOML of [[organisation]], public certificates only);
    # registering is idempotent, so every start re-applies the file.
    if [ -n "${IPJMS_DIRECTORY_CONFIG:-}" ]; then
        # shellcheck disable=SC2046
        ipjms coordinator register-org --data-dir "$DATA_DIR" $(db_args) --config "$IPJMS_DIRECTORY_CONFIG"
    fi
    # ...or one folder per organisation, each with its public certificates and directory.toml.
    if [ -n "${IPJMS_DIRECTORY_DIR:-}" ]; then
        for entry in "$IPJMS_DIRECTORY_DIR"/*/directory.toml; do
            [ -f "$entry" ] || continue
            # shellcheck disable=SC2046
            ipjms coordinator register-org --data-dir "$DATA_DIR" $(db_args) --config "$entry"
        done
    fi
    set -- --host "$LISTEN_HOST" --port "${IPJMS_GRPC_PORT:-7443}" --http-port "$PORT" "$@"
    [ -n "${IPJMS_CA_DIR:-}" ] && set -- --ca-dir "$IPJMS_CA_DIR" "$@"
    [ -n "${IPJMS_ORG_DIR:-}" ] && set -- --org-dir "$IPJMS_ORG_DIR" "$@"
    [ -n "${IPJMS_CONSENT_URL:-}" ] && set -- --consent-url "$IPJMS_CONSENT_URL" "$@"
    [ "${IPJMS_HTTP_TLS:-0}" = "1" ] && set -- --http-tls "$@"
    # shellcheck disable=SC2046
    exec ipjms coordinator serve --data-dir "$DATA_DIR" $(db_args) "$@"
    ;;
consent)
    check_db_password
    set -- --host "$LISTEN_HOST" --port "$PORT" "$@"
    [ -n "${IPJMS_CA_DIR:-}" ] && set -- --ca-dir "$IPJMS_CA_DIR" "$@"
    [ -n "${IPJMS_PUBLIC_URL:-}" ] && set -- --public-url "$IPJMS_PUBLIC_URL" "$@"
    # shellcheck disable=SC2046
    exec ipjms consent serve --data-dir "$DATA_DIR" $(db_args) $(tls_args) "$@"
    ;;
superlink)
    # `ipjms fl superlink`: Flower's SuperLink with TLS from this organisation's PKI credentials and
    # SuperNode authentication; admits the SuperNodes of the organisations in IPJMS_FL_AUTHORIZE
    # (their public certificates under IPJMS_DIRECTORY_DIR/ORG). HTTP /healthz on $IPJMS_PORT.
    require IPJMS_ORG_DIR
    for org in ${IPJMS_FL_AUTHORIZE:-}; do
        set -- --authorize "${IPJMS_DIRECTORY_DIR:-/run/ipjms/directory}/$org" "$@"
    done
    exec ipjms fl superlink --data-dir "$DATA_DIR" --org-dir "$IPJMS_ORG_DIR" --host "$LISTEN_HOST" \
        --port "$PORT" --fleet-port "${IPJMS_FLEET_PORT:-9092}" \
        --control-port "${IPJMS_CONTROL_PORT:-9093}" --control-host "${IPJMS_CONTROL_HOST:-127.0.0.1}" "$@"
    ;;
supernode)
    # `ipjms fl supernode`: trains on this node's store through the node's own FHIR API (as a SMART
    # backend client whose key pki-bootstrap generated), under the node's consent and ε budget.
    require IPJMS_ORG_DIR
    require IPJMS_SUPERLINK_ADDRESS
    require IPJMS_FHIR_URL
    require IPJMS_FL_CLIENT_KEY_FILE
    require IPJMS_NODE_CONSENT_URL
    require IPJMS_NODE_PSEUDONYM_URL
    [ -n "${IPJMS_FL_HEARTBEAT_INTERVAL:-}" ] && set -- --heartbeat-interval "$IPJMS_FL_HEARTBEAT_INTERVAL" "$@"
    exec ipjms fl supernode --data-dir "$DATA_DIR" --superlink "$IPJMS_SUPERLINK_ADDRESS" \
        --org-dir "$IPJMS_ORG_DIR" --fhir-url "$IPJMS_FHIR_URL" \
        --client-id "${IPJMS_FL_CLIENT_ID:-fl-supernode}" --client-key "$IPJMS_FL_CLIENT_KEY_FILE" \
        --consent-url "$IPJMS_NODE_CONSENT_URL" --authority "${IPJMS_AUTHORITY_ORG:-org-authority}" \
        --pseudonym-url "$IPJMS_NODE_PSEUDONYM_URL" --host "$LISTEN_HOST" --port "$PORT" "$@"
    ;;
pseudonym)
    # `ipjms pseudonym serve`: the region's pseudonymisation authority. Its OPRF key ring is made
    # by the service itself in $DATA_DIR/oprf-keys at first start (never by pki-bootstrap, the
    # CA or gen-secrets.sh) and stays on its own volume; it serves HTTPS with its own
    # certificate (IPJMS_ORG_DIR) and admits only the organisations in IPJMS_PSEUDONYM_ALLOW.
    require IPJMS_CA_DIR
    require IPJMS_PUBLIC_URL
    require IPJMS_PSEUDONYM_ALLOW
    check_db_password
    for org in $IPJMS_PSEUDONYM_ALLOW; do
        set -- --client "$org" "$@"
    done
    # shellcheck disable=SC2046
    exec ipjms pseudonym serve --data-dir "$DATA_DIR" --host "$LISTEN_HOST" --port "$PORT" \
        --ca-dir "$IPJMS_CA_DIR" --public-url "$IPJMS_PUBLIC_URL" $(db_args) $(tls_args) "$@"
    ;;
pki-bootstrap)
    # Idempotent: an existing CA or certificate is kept, so re-running `up` after a
    # restart never re-keys the region (rotation is a deliberate operator step, see trust/README.md).
    # IPJMS_PKI_ORGS: space-separated ORG=HOST pairs, e.g. "org-a=node-a org-b=node-b"
    # IPJMS_PKI_GENERATED: space-separated names that get a generated password (databases, the
    #   first admin of each node): written to /pki/secrets/NAME/password
    # IPJMS_PKI_DB_SERVERS: space-separated database host names that get a TLS server certificate
    #   from the CA: /pki/db-tls/NAME/tls.cert.pem + tls.key.pem
    require IPJMS_PKI_ORGS
    ca_dir="${IPJMS_PKI_CA_DIR:-/pki/ca}"
    orgs_dir="${IPJMS_PKI_ORGS_DIR:-/pki/orgs}"
    ca_public_dir="${IPJMS_PKI_CA_PUBLIC_DIR:-/pki/ca-public}"
    directory_dir="${IPJMS_PKI_DIRECTORY_DIR:-/pki/directory}"
    signing_dir="${IPJMS_PKI_SIGNING_DIR:-/pki/signing}"
    secrets_dir="${IPJMS_PKI_SECRETS_DIR:-/pki/secrets}"
    # The CA key is encrypted with the passphrase in IPJMS_CA_PASSPHRASE_FILE (Compose: the secret
    # ca-passphrase); it is handed to each `ipjms pki` call alone, never exported.
    require IPJMS_CA_PASSPHRASE_FILE
    if [ ! -s "$IPJMS_CA_PASSPHRASE_FILE" ]; then
        echo "ipjms-entrypoint: $IPJMS_CA_PASSPHRASE_FILE is empty or missing (Compose: set IPJMS_CA_PASSPHRASE)" >&2
        exit 64
    fi
    umask 077
    mkdir -p "$ca_dir" "$orgs_dir" "$secrets_dir"
    if [ -z "$(ls -A "$ca_dir")" ]; then
        IPJMS_CA_PASSPHRASE="$(cat "$IPJMS_CA_PASSPHRASE_FILE")" \
            ipjms pki init-ca "$ca_dir" --passphrase-env IPJMS_CA_PASSPHRASE
    fi
    # Each organisation makes its own keys in its own folder and sends a certificate request;
    # the CA signs it (public keys only: requests and certificates under ca/requests, ca/signed)
    # and the organisation installs the certificates. The CA folder holds no organisation's key.
    for pair in $IPJMS_PKI_ORGS; do
        org="${pair%%=*}"
        host="${pair#*=}"
        if [ ! -s "$orgs_dir/$org/org.json" ]; then
            rm -rf "$orgs_dir/$org/pending" "$ca_dir/signed/$org"
            ipjms pki request "$orgs_dir/$org" --org "$org" --host "$host"
            mkdir -p "$ca_dir/requests" "$ca_dir/signed"
            cp "$orgs_dir/$org/pending/request.pem" "$ca_dir/requests/$org.request.pem"
            IPJMS_CA_PASSPHRASE="$(cat "$IPJMS_CA_PASSPHRASE_FILE")" \
                ipjms pki sign-request "$ca_dir" "$ca_dir/requests/$org.request.pem" --org "$org" \
                --host "$host" --out "$ca_dir/signed/$org" --ca-passphrase-env IPJMS_CA_PASSPHRASE
            ipjms pki accept "$orgs_dir/$org" "$ca_dir/signed/$org"
        fi
    done
    # One TLS server certificate per database in IPJMS_PKI_DB_SERVERS (space-separated host
    # names, e.g. "coordinator-db node-a-db"), by the same three steps: the database's keys are
    # made in db-servers/NAME, the CA signs the request, the certificates are accepted there;
    # db-tls/NAME gets the TLS certificate and key alone (what the database container mounts).
    db_servers_dir="${IPJMS_PKI_DB_SERVERS_DIR:-/pki/db-servers}"
    db_tls_dir="${IPJMS_PKI_DB_TLS_DIR:-/pki/db-tls}"
    for name in ${IPJMS_PKI_DB_SERVERS:-}; do
        if [ ! -s "$db_servers_dir/$name/org.json" ]; then
            rm -rf "$db_servers_dir/$name/pending" "$ca_dir/signed/$name"
            ipjms pki request "$db_servers_dir/$name" --org "$name" --host "$name"
            mkdir -p "$ca_dir/requests" "$ca_dir/signed"
            cp "$db_servers_dir/$name/pending/request.pem" "$ca_dir/requests/$name.request.pem"
            IPJMS_CA_PASSPHRASE="$(cat "$IPJMS_CA_PASSPHRASE_FILE")" \
                ipjms pki sign-request "$ca_dir" "$ca_dir/requests/$name.request.pem" --org "$name" \
                --host "$name" --out "$ca_dir/signed/$name" --ca-passphrase-env IPJMS_CA_PASSPHRASE
            ipjms pki accept "$db_servers_dir/$name" "$ca_dir/signed/$name"
        fi
        mkdir -p "$db_tls_dir/$name"
        cp "$db_servers_dir/$name/tls.cert.pem" "$db_servers_dir/$name/tls.key.pem" "$db_tls_dir/$name/"
    done
    # Each organisation's public certificates, for the coordinator's directory (no private key).
    for pair in $IPJMS_PKI_ORGS; do
        org="${pair%%=*}"
        mkdir -p "$directory_dir/$org"
        for f in org.json ca.cert.pem tls.cert.pem signing.cert.pem encryption.cert.pem; do
            cp "$orgs_dir/$org/$f" "$directory_dir/$org/$f"
        done
    done
    # Each organisation's signing identity alone (org.json, CA certificate, signing certificate and
    # key: what trust.pki.load_signing_identity reads) for its SuperNode, which must not see the
    # TLS or encryption keys. Refreshed on every run, so a rotation reaches it.
    for pair in $IPJMS_PKI_ORGS; do
        org="${pair%%=*}"
        mkdir -p "$signing_dir/$org"
        for f in org.json ca.cert.pem signing.cert.pem signing.key.pem; do
            cp "$orgs_dir/$org/$f" "$signing_dir/$org/$f"
        done
    done
    # The coordinator's directory TOML (IPJMS_PKI_DIRECTORY_TOML), beside the certificates it names.
    if [ -n "${IPJMS_PKI_DIRECTORY_TOML:-}" ]; then
        mkdir -p "$directory_dir"
        printf '%s\n' "$IPJMS_PKI_DIRECTORY_TOML" >"$directory_dir/directory.toml"
    fi
    # The CA's public part (certificate, CRL, issued certificates) for services that verify peers.
    mkdir -p "$ca_public_dir"
    cp "$ca_dir/ca.cert.pem" "$ca_dir/ca.crl.pem" "$ca_public_dir/"
    if [ -d "$ca_dir/issued" ]; then
        mkdir -p "$ca_public_dir/issued"
        cp "$ca_dir/issued/"*.pem "$ca_public_dir/issued/"
    fi
    # One random password per name (a directory each, so a container mounts only its own).
    for name in ${IPJMS_PKI_GENERATED:-}; do
        if [ ! -s "$secrets_dir/$name/password" ]; then
            mkdir -p "$secrets_dir/$name"
            python -c "import secrets; print(secrets.token_urlsafe(32))" >"$secrets_dir/$name/password"
        fi
    done
    # One EC P-256 key pair per name in IPJMS_PKI_CLIENT_KEYS (a SuperNode's backend client key):
    # NAME/key.pem for the SuperNode, NAME-public/public.pem for the node that registers it.
    for name in ${IPJMS_PKI_CLIENT_KEYS:-}; do
        if [ ! -s "$secrets_dir/$name/key.pem" ]; then
            mkdir -p "$secrets_dir/$name"
            python - "$secrets_dir/$name" <<'PY'
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

out = Path(sys.argv[1])
key = ec.generate_private_key(ec.SECP256R1())
(out / "key.pem").write_bytes(
    key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
)
public = out.parent / f"{out.name}-public"
public.mkdir(exist_ok=True)
(public / "public.pem").write_bytes(
    key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
)
PY
        fi
    done
    echo "ipjms-entrypoint: PKI ready (CA in $ca_dir, organisations: $IPJMS_PKI_ORGS)"
    ;;
crl-signer)
    # Keeps the regional CRL fresh. Every service refuses a CRL past its nextUpdate (+1 h grace):
    # revocation fails closed (trust/pki.py revocation_list), so without this the region stops a
    # week after bootstrap. Re-signs (same entries, next cRLNumber) once the CRL is older than
    # IPJMS_CRL_REISSUE_AFTER_HOURS (default 24), then publishes it to ca-public atomically;
    # checks every IPJMS_CRL_CHECK_SECONDS (default 3600). IPJMS_CRL_ONCE=1: one pass (drills).
    ca_dir="${IPJMS_PKI_CA_DIR:-/pki/ca}"
    ca_public_dir="${IPJMS_PKI_CA_PUBLIC_DIR:-/pki/ca-public}"
    require IPJMS_CA_PASSPHRASE_FILE   # read at each signing, passed to that call alone
    while :; do
        IPJMS_CA_PASSPHRASE="$(cat "$IPJMS_CA_PASSPHRASE_FILE")" ipjms pki reissue-crl "$ca_dir" \
            --older-than-hours "${IPJMS_CRL_REISSUE_AFTER_HOURS:-24}" \
            --ca-passphrase-env IPJMS_CA_PASSPHRASE
        cp "$ca_dir/ca.crl.pem" "$ca_public_dir/.ca.crl.pem.new"
        mv "$ca_public_dir/.ca.crl.pem.new" "$ca_public_dir/ca.crl.pem"
        [ "${IPJMS_CRL_ONCE:-0}" = "1" ] && exit 0
        sleep "${IPJMS_CRL_CHECK_SECONDS:-3600}"
    done
    ;;
migrate)
    require IPJMS_DB_URL
    check_db_password
    exec ipjms migrate "$@"
    ;;
healthcheck)
    if [ -n "${IPJMS_HEALTH_TCP:-}" ]; then   # host:port, for a service without an HTTP endpoint
        exec python -c "import socket, sys; h, p = sys.argv[1].rsplit(':', 1); socket.create_connection((h, int(p)), 4).close()" "$IPJMS_HEALTH_TCP"
    fi
    scheme=http
    [ "${IPJMS_HTTP_TLS:-0}" = "1" ] && scheme=https
    url="${IPJMS_HEALTH_URL:-$scheme://127.0.0.1:$PORT/healthz}"
    exec python - "$url" <<'PY'
import os, ssl, sys, urllib.request

context = None
if sys.argv[1].startswith("https:"):
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    context.check_hostname = False  # our own listener on loopback; the chain is still verified
urllib.request.urlopen(sys.argv[1], timeout=4, context=context).read()
PY
    ;;
ipjms)
    check_db_password
    exec ipjms "$@"
    ;;
-h | --help | help)
    awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"
    ;;
*)
    echo "ipjms-entrypoint: unknown role '$role' (node|coordinator|consent|superlink|supernode|pseudonym|pki-bootstrap|migrate|healthcheck|ipjms)" >&2
    exit 64
    ;;
esac
