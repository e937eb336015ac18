#!/usr/bin/env bash
# Makes the files the example overlay turns into Secrets, one Secret per role:
#   make-secrets.sh [PKI_DIR] [SECRETS_DIR] [STORAGE_NODES]
# PKI_DIR (default deploy/k8s/pki, gitignored) keeps the CA key and the admin certificate: it stays
# with the operator, no Secret holds either. SECRETS_DIR (default overlays/example/secrets,
# gitignored) gets one folder per role with the CA certificate and that role's certificates and
# keys only; gateway-https/ the gateway's S3 HTTPS certificate (tls.crt, tls.key); root.env the
# root S3 credentials. Run again: existing certificates are kept, missing ones issued from the
# same CA (e.g. storage-4..7 after raising STORAGE_NODES to add an erasure set).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pki=${1:-$here/pki}
out=${2:-$here/overlays/example/secrets}
storage_nodes=${3:-4}
sealstore=${SEALSTORE:-sealstore}
mkdir -p "$pki" "$out"
bundles=$(mktemp -d)
trap 'rm -rf "$bundles"' EXIT
instances=(kms crypto-0 heal-0 gateway-0)
for ((i = 0; i < storage_nodes; i++)); do instances+=("storage-$i"); done
for instance in "${instances[@]}"; do mkdir -p "$bundles/$instance"; done
# Names the gateway's HTTPS certificate answers to inside the cluster (add yours with --https-san).
SEALSTORE_DATA_DIR=$pki SEALSTORE_CERTS_DIR=$pki/certs $sealstore init --storage-nodes "$storage_nodes" \
  --crypto-workers 1 --gateways 1 --https-san gateway --https-san gateway.sealstore.svc \
  --https-san gateway.sealstore.svc.cluster.local ${SEALSTORE_HTTPS_SANS:-} --bundles "$bundles" >/dev/null
umask 077
for role in kms crypto heal gateway storage gateway-https; do rm -rf "${out:?}/$role"; mkdir -p "$out/$role"; done
for instance in "${instances[@]}"; do
  role=${instance%-[0-9]*}
  cp "$bundles/$instance/certs/"*.pem "$out/$role/"
  [ "$role" != kms ] || cp "$bundles/$instance/certs/identities.json" "$out/kms/"
done
cp "$bundles/gateway-0/certs/https/gateway.pem" "$out/gateway-https/tls.crt"
cp "$bundles/gateway-0/certs/https/gateway-key.pem" "$out/gateway-https/tls.key"
python3 - "$pki/credentials.json" "$out/root.env" <<'PY'
import json, sys
creds = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(f"user={creds['access_key']}\npassword={creds['secret_key']}\n")
PY
echo "secrets for ${#instances[@]} instances in $out (CA key and admin certificate stay in $pki)"
