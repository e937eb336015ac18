"""Deployment files: Kubernetes manifests validated offline against the real API schemas,
the compose file checked for a consistent topology."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")


def test_k8s_manifests_validate_strictly():
    files = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(Path(f).name for f in files)
    result = subprocess.run([VALIDATE, "--strict", "-k", "1.30.0", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INFO" in result.stdout or "valid" in result.stdout.lower()


def test_k8s_topology_names_every_storage_pod():
    config = yaml.safe_load((DEPLOY / "k8s" / "config.yaml").read_text())["data"]
    storage = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "storage.yaml").read_text()) if d["kind"] == "StatefulSet"][0]
    members = config["SEALSTORE_STORAGE_SET"].split(",")
    assert members == [f"storage-{i}.storage:9111/0" for i in range(storage["spec"]["replicas"])]
    assert int(config["SEALSTORE_PARITY"]) <= len(members) // 2


def test_compose_runs_every_service_with_one_topology():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"init", "kms", "crypto", "gateway", "storage1", "storage2", "storage3", "storage4"} <= set(services)
    members = compose["x-sealstore"]["environment"]["SEALSTORE_STORAGE_SET"].split(",")
    assert [m.split(":")[0] for m in members] == ["storage1", "storage2", "storage3", "storage4"]
    for name, service in services.items():
        command = service["command"]
        if name.startswith("storage") or name in ("kms", "crypto", "gateway"):
            role = "storage" if name.startswith("storage") else name
            assert command[:3] == ["python", "-m", f"services.{role}"], name
    assert services["gateway"]["ports"] == ["${SEALSTORE_PORT:-9000}:9000"]
