#!/bin/sh
# Generate the secret material the Kustomize base (and the add-node overlay) turn into Secrets.
# Nothing this script writes is committed (deploy/k8s/.gitignore ignores every secrets/ folder).
#
#   deploy/k8s/gen-secrets.sh [--ca-dir DIR] [--k8s-dir DIR] [--add-node INSTANCE ORG]
#
# --ca-dir   the regional CA (default $IPJMS_CA_DIR or ~/.ipjms/regional-ca). Created if absent.
#            The CA private key stays here, on the operator's machine — it never enters the cluster;
#            this folder receives the organisations' requests, never their private keys.
# --k8s-dir  the deploy/k8s folder to write into (default: this script's folder).
# --add-node also generate the Secrets of the overlay's extra node (e.g. clinic-c org-clinic-c);
#            its display name and level: $IPJMS_EXTRA_NODE_NAME, $IPJMS_EXTRA_NODE_LEVEL.
# $IPJMS     the ipjms command (default: ipjms on PATH).
# $IPJMS_CA_PASSPHRASE  required: the passphrase the CA's private key is encrypted with (a new
#            CA is created encrypted; issuing needs it). Never written anywhere by this script.
#
# Organisations make their own keys: each one's keys are generated in its own folder under
# secrets/orgs/ORG and only its certificate request reaches the CA folder (see issue_org below).
#
# Idempotent: existing passwords, keys and certificates are kept. To rotate an organisation's
# credentials, delete secrets/orgs/ORG and re-run this script (a new request, signed by the CA),
# then re-apply: the Secret's name hash changes, so the pods that mount it are rolled.
set -eu

if [ -z "${IPJMS_CA_PASSPHRASE:-}" ]; then
    echo "gen-secrets.sh: set IPJMS_CA_PASSPHRASE (the CA key is kept encrypted with it)" >&2
    exit 64
fi

here="$(cd "$(dirname "$0")" && pwd)"
k8s_dir="$here"
ca_dir="${IPJMS_CA_DIR:-$HOME/.ipjms/regional-ca}"
ipjms="${IPJMS:-ipjms}"
extra_instance=""
extra_org=""

while [ "$#" -gt 0 ]; do
    case "$1" in
    --ca-dir) ca_dir="$2"; shift 2 ;;
    --k8s-dir) k8s_dir="$2"; shift 2 ;;
    --add-node) extra_instance="$2"; extra_org="$3"; shift 3 ;;
    *) echo "gen-secrets: unknown argument $1" >&2; exit 64 ;;
    esac
done

umask 077
random_secret() {
    python3 -c "import secrets, sys; sys.stdout.write(secrets.token_urlsafe(32))"
}

# write_password FILE: a random database password, kept if present.
write_password() {
    mkdir -p "$(dirname "$1")"
    [ -s "$1" ] || random_secret >"$1"
}

# client_key OUT_DIR NODE: the SuperNode's backend client key pair (EC P-256), kept if present.
client_key() {
    out="$1/fl-client/$2"
    if [ ! -s "$out/key.pem" ]; then
        mkdir -p "$out"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/key.pem" 2>/dev/null
        openssl pkey -in "$out/key.pem" -pubout -out "$out/public.pem"
    fi
}

# issue_org OUT_DIR ORG HOSTS: the organisation makes its own keys and a certificate request in
# its own credentials folder (OUT_DIR/orgs/ORG, which stands in for the organisation's machine);
# the CA signs the request — public keys only, kept under CA_DIR/requests and CA_DIR/signed —
# and the organisation installs the certificates. The CA folder never holds an organisation's
# private key. In a real region each organisation runs `ipjms pki request` / `ipjms pki accept`
# itself (deploy/README.md, "Keys").
issue_org() {
    out="$1/orgs/$2"
    if [ ! -s "$out/tls.key.pem" ]; then
        rm -rf "$out/pending"
        $ipjms pki request "$out" --org "$2" --host "$3" >/dev/null
        mkdir -p "$ca_dir/requests" "$ca_dir/signed"
        cp "$out/pending/request.pem" "$ca_dir/requests/$2.request.pem"
        rm -rf "$ca_dir/signed/$2"
        $ipjms pki sign-request "$ca_dir" "$ca_dir/requests/$2.request.pem" --org "$2" \
            --host "$3" --out "$ca_dir/signed/$2" --ca-passphrase-env IPJMS_CA_PASSPHRASE >/dev/null
        $ipjms pki accept "$out" "$ca_dir/signed/$2" >/dev/null
    fi
}

# directory_entry OUT_DIR ORG NAME LEVEL [FHIR_URL]: the organisation's public certificates and
# its entry for the coordinator's directory (registered on every coordinator start).
directory_entry() {
    out="$1/directory/$2"
    mkdir -p "$out"
    for f in org.json ca.cert.pem tls.cert.pem signing.cert.pem encryption.cert.pem; do
        cp "$1/orgs/$2/$f" "$out/$f"
    done
    {
        echo '[[organisation]]'
        echo 'credentials = "."'
        echo "name = \"$3\""
        echo "level = \"$4\""
        if [ -n "${5:-}" ]; then
            echo "endpoints = [{kind = \"fhir\", url = \"$5\"}]"
        fi
    } >"$out/directory.toml"
}

if [ ! -s "$ca_dir/ca.cert.pem" ]; then
    $ipjms pki init-ca "$ca_dir" --passphrase-env IPJMS_CA_PASSPHRASE >/dev/null
fi

base="$k8s_dir/base/secrets"
mkdir -p "$base/ca-public" "$base/db"
# The public part of the CA is refreshed on every run (a revocation re-issues the CRL).
cp "$ca_dir/ca.cert.pem" "$base/ca-public/ca.cert.pem"
cp "$ca_dir/ca.crl.pem" "$base/ca-public/ca.crl.pem"
# No pseudonym key is made here: nodes ask the pseudonymisation authority, which makes its OPRF
# key itself at first start, on its own volume (issue 23).

for db in coordinator consent pseudonym tertiary clinic-a clinic-b; do
    write_password "$base/db/$db.password"
done
for node in tertiary clinic-a clinic-b; do   # each node's first admin, its SuperNode's client
    write_password "$base/admin/$node.password"
    client_key "$base" "$node"
done
issue_org "$base" org-authority "coordinator,coordinator.ipjms.svc,superlink,superlink.ipjms.svc,127.0.0.1"
issue_org "$base" org-consent "consent,consent.ipjms.svc"
issue_org "$base" org-pseudonym "pseudonym,pseudonym.ipjms.svc"
for node in tertiary clinic-a clinic-b; do
    issue_org "$base" "org-$node" "node-$node,node-$node.ipjms.svc,supernode-$node"
done
# Each database's TLS server certificate, for its Service name, by the same request flow (the
# database's keys are made in secrets/db-servers/orgs/db-NAME; only tls.* reach its Secret).
for db in coordinator consent pseudonym tertiary clinic-a clinic-b; do
    issue_org "$base/db-servers" "db-$db" "db-$db,db-$db.ipjms.svc"
done
directory_entry "$base" org-authority "Regional Health Authority" authority
directory_entry "$base" org-tertiary "Regional Tertiary Hospital" tertiary https://node-tertiary:8080/fhir
directory_entry "$base" org-clinic-a "Community Clinic A" community https://node-clinic-a:8080/fhir
directory_entry "$base" org-clinic-b "Community Clinic B" community https://node-clinic-b:8080/fhir

if [ -n "$extra_instance" ]; then
    overlay="$k8s_dir/overlays/add-node/secrets"
    write_password "$overlay/db/$extra_instance.password"
    write_password "$overlay/admin/$extra_instance.password"
    client_key "$overlay" "$extra_instance"
    issue_org "$overlay" "$extra_org" \
        "node-$extra_instance,node-$extra_instance.ipjms.svc,supernode-$extra_instance"
    issue_org "$overlay/db-servers" "db-$extra_instance" "db-$extra_instance,db-$extra_instance.ipjms.svc"
    directory_entry "$overlay" "$extra_org" "${IPJMS_EXTRA_NODE_NAME:-Community Clinic ($extra_instance)}" \
        "${IPJMS_EXTRA_NODE_LEVEL:-community}" "https://node-$extra_instance:8080/fhir"
fi
echo "gen-secrets: wrote secret material under $k8s_dir (CA: $ca_dir)"
