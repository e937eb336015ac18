#!/bin/sh
# OpenBao for compose's `openbao` profile: raft storage in /openbao, auto-unsealed on every start
# by a static seal whose 32-byte key is made on the first start (it stays in the openbao volume:
# a development setup, not a key ceremony). On the first start it is also initialised, the
# transit engine enabled, and a token for the sealstore kms written to /kms-token/kms-token (the
# only file the kms mounts), limited by policy to transit. The root token stays in
# /openbao/init.json, inside this container's volume.
set -eu
umask 077
dir=/openbao
[ -s "$dir/unseal.key" ] || head -c 32 /dev/urandom > "$dir/unseal.key"
mkdir -p "$dir/raft"
cat > "$dir/config.hcl" <<HCL
storage "raft" {
  path    = "$dir/raft"
  node_id = "openbao"
}
listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}
seal "static" {
  current_key_id = "1"
  current_key    = "file://$dir/unseal.key"
}
api_addr          = "http://openbao:8200"
cluster_addr      = "http://127.0.0.1:8201"
disable_mlock     = true
default_lease_ttl = "87600h"
max_lease_ttl     = "87600h"
HCL
bao server -config="$dir/config.hcl" &
server=$!
trap 'kill -TERM $server; wait $server' TERM INT
export BAO_ADDR=http://127.0.0.1:8200
# `bao status` exits 0 when unsealed, 2 when sealed or not initialised, 1 when unreachable.
until status=0; bao status >/dev/null 2>&1 || status=$?; [ "$status" != 1 ]; do sleep 1; done
if [ ! -s "$dir/init.json" ]; then
  bao operator init -format=json > "$dir/init.json.new"
  mv "$dir/init.json.new" "$dir/init.json"
fi
until bao status >/dev/null 2>&1; do sleep 1; done
if [ ! -s /kms-token/kms-token ]; then
  BAO_TOKEN=$(sed -n 's/.*"root_token": *"\([^"]*\)".*/\1/p' "$dir/init.json")
  export BAO_TOKEN
  bao secrets list -format=json | grep -q '"transit/"' || bao secrets enable transit >/dev/null
  printf 'path "transit/*" {\n  capabilities = ["create", "read", "update", "delete", "list"]\n}\n' \
    | bao policy write sealstore-kms - >/dev/null
  bao token create -orphan -policy=sealstore-kms -ttl=87600h -field=token > /kms-token/kms-token.new
  # The kms runs as another user (10001): the token file is readable by it, the volume by nobody else.
  chmod 0444 /kms-token/kms-token.new
  mv /kms-token/kms-token.new /kms-token/kms-token
fi
wait $server
