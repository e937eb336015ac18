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
    assert {"init", "kms", "crypto", "gateway", "heal", "storage1", "storage2", "storage3", "storage4"} <= set(services)
    members = compose["x-sealstore"]["environment"]["SEALSTORE_STORAGE_SET"].split(",")
    assert [m.split(":")[0] for m in members] == ["storage1", "storage2", "storage3", "storage4"]
    for name, service in services.items():
        command = service["command"]
        if name.startswith("storage") or name in ("kms", "crypto", "gateway", "heal"):
            role = "storage" if name.startswith("storage") else name
            assert command[:3] == ["python", "-m", f"services.{role}"], name
    assert services["gateway"]["ports"] == ["${SEALSTORE_PORT:-9000}:9000"]


# Issue 7 finding 6: compose mounted every role's private key, the CA key and the root
# credentials into every container.
COMPOSE_INSTANCES = {"kms": "kms", "admin": "admin", "crypto": "crypto-0", "gateway": "gateway-0",
                     "heal": "heal-0", "storage1": "storage-0", "storage2": "storage-1", "storage3": "storage-2", "storage4": "storage-3"}


def test_compose_gives_each_container_only_its_own_bundle():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    pki_users = [name for name, s in services.items() if any(str(v).startswith("pki:") for v in s.get("volumes", []))]
    assert pki_users == ["init"]  # the CA key lives in the pki volume only
    for name, instance in COMPOSE_INSTANCES.items():
        service = services[name]
        volumes = [str(v) for v in service.get("volumes", [])]
        bundles = [v for v in volumes if v.startswith("bundle-")]
        assert bundles == [f"bundle-{instance}:/secrets:ro"], name
        assert not any(v.startswith(("secrets:", "pki:")) for v in volumes), name
        env = service["environment"]
        assert env["SEALSTORE_INSTANCE"] == instance, name
        assert ("SEALSTORE_ROOT_USER" in env) == (name == "gateway"), name
    # init writes a bundle for exactly these instances.
    init_targets = {str(v).split(":")[1] for v in services["init"]["volumes"] if str(v).startswith("bundle-")}
    assert init_targets == {f"/bundles/{i}" for i in COMPOSE_INSTANCES.values()}


def test_k8s_pods_mount_only_their_roles_secret():
    seen = {}
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            spec = doc["spec"]["template"]["spec"]
            role = spec["containers"][0]["command"][2].split(".")[1]
            secrets = [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
            refs = [e["valueFrom"]["secretKeyRef"]["name"] for c in spec["containers"] for e in c.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})]
            seen[role] = (secrets, set(refs))
            env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
            assert "SEALSTORE_INSTANCE" in env, role
    assert seen == {"kms": (["sealstore-certs-kms"], set()), "storage": (["sealstore-certs-storage"], set()),
                    "crypto": (["sealstore-certs-crypto"], set()), "heal": (["sealstore-certs-heal"], set()),
                    "gateway": (["sealstore-certs-gateway"], {"sealstore-root"})}
