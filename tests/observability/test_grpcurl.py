"""The README's grpcurl block, run as written against a real cluster: only the values of the
variables its first line sets are the cluster's."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.harness import RunningCluster

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def readme_block() -> tuple[dict[str, str], str]:
    """(the variables of the block's first line, the rest of the block)."""
    section = (REPO / "README.md").read_text().split("\n## Debugging with grpcurl\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    first, rest = block.split("\n", 1)
    variables = dict(word.split("=", 1) for word in shlex.split(first))
    return variables, rest


def _address(cluster: RunningCluster, name: str) -> str:
    return cluster.service(name)["address"]


def test_the_readme_grpcurl_commands_run_as_written(observed_cluster):
    if not (BIN / "grpcurl").exists():
        pytest.fail("grpcurl is not in .venv/bin: `make test` installs it (requirements-test.lock)")
    variables, commands = readme_block()
    ours = {"C": str(observed_cluster.data / "certs"), "KMS": _address(observed_cluster, "kms"),
            "CRYPTO": _address(observed_cluster, "crypto"), "STORAGE": _address(observed_cluster, "storage1")}
    assert set(variables) == set(ours), f"the README block sets {sorted(variables)}; this test knows {sorted(ours)}"
    assert variables["C"] == "data/certs" and variables["KMS"] == "127.0.0.1:9101"  # what `make run` gives
    assert commands.count("grpcurl ") == 4
    script = "set -euo pipefail\n" + "".join(f"{k}={shlex.quote(v)}\n" for k, v in ours.items()) + commands
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                            env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(observed_cluster.data)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # list: the kms's services, reflection included.
    assert "sealstore.v1.KeyService" in out and "grpc.health.v1.Health" in out
    # ListKeys: the deployment keys the kms made at start.
    listed = json.loads(out[out.index("{"): out.index("\n}\n") + 2])
    assert {"sealstore-sse-s3", "sealstore-default"} <= {k["name"] for k in listed.get("keys", [])}, listed
    # The storage node's health, and the worker's service by reflection.
    assert '"status": "SERVING"' in out
    assert "rpc PutObject ( stream .sealstore.v1.PutObjectRequest )" in out
