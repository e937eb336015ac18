# sealstore: `make run` starts the local cluster, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/sealstore/v1/*.proto)
GENERATED := sealstore/v1/.generated

.PHONY: install protos run test unit bench clean system-tools compose-test

install: $(VENV)/.installed $(GENERATED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Generated code goes into sealstore/v1 (the proto package path); never edit it by hand.
protos: $(GENERATED)
$(GENERATED): $(PROTOS) $(VENV)/.installed
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.lock
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.lock
	touch $@

run: install
	$(BIN)/sealstore run

# The compose test needs a Docker engine and debootstrap (images are built locally: no registry);
# the client matrix (tests/clients) needs rclone and s3cmd; the metrics test a real Prometheus server.
# All from Debian's packages.
SYSTEM_TOOLS := dockerd:docker.io debootstrap:debootstrap rclone:rclone s3cmd:s3cmd prometheus:prometheus
system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $$missing >/dev/null; \
	  else \
	    echo "note: missing Debian packages:$$missing (not root): the tests that need them say so and are skipped"; \
	  fi; \
	fi

test: install $(VENV)/.test-installed system-tools
	$(BIN)/python -m pytest -q tests

# `docker compose up` as users type it: build, SSE-KMS, a storage node down, heal, down/up (part of
# `make test`; skipped with the reason where no Docker engine can run). About 5 minutes once the
# debootstrap base is cached (deploy/docker/build.sh, tests/deploy/test_compose.py).
compose-test: install $(VENV)/.test-installed system-tools
	$(BIN)/python -m pytest -q -rs tests/deploy/test_compose.py

# In-process tests only (tests/conftest.py): process tests are deselected and a test that starts
# a child process anyway fails. `make test` runs both layers.
unit: install $(VENV)/.test-installed
	$(BIN)/python -m pytest -q tests --unit

bench: install $(VENV)/.test-installed
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-bench.lock && $(BIN)/python bench/side_by_side.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) sealstore/v1/*_pb2*.py* $(GENERATED)
