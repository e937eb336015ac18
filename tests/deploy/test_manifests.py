"""Deployment files: the Kubernetes base + example overlay rendered as `kubectl apply -k` would,
validated offline against the API schemas of three Kubernetes versions, and held to the
invariants that make it safe (storage PDB within the erasure set's tolerance, one role per Secret
and never the CA key, probes that check each service over its own TLS, non-root pods with
read-only root filesystems); the compose file checked for one topology and one bundle per container."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealctl.main import build_parser
from sealstore import config, tls
from tests.deploy import kustomize_lite

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")
K8S_VERSIONS = ("1.30.0", "1.33.0", "1.37.0")
"""Oldest, middle and newest of the schemas kubernetes-validate ships that cover the APIs used
(autoscaling/v2 and policy/v1 exist in all)."""
ROLES = {"kms": "StatefulSet", "storage": "StatefulSet", "crypto": "Deployment", "gateway": "Deployment",
         "heal": "Deployment"}


def _kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory) -> dict:
    """deploy/k8s copied aside with secrets made by its own make-secrets.sh (the PKI, with the
    CA key, next to it and never in the overlay)."""
    root = tmp_path_factory.mktemp("k8s")
    shutil.copytree(DEPLOY / "k8s", root / "k8s", ignore=shutil.ignore_patterns("secrets", "pki"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSTORE_")}
    env["SEALSTORE"] = f"{sys.executable} -m sealctl"
    made = subprocess.run(["bash", str(root / "k8s" / "make-secrets.sh"), str(root / "pki")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    return {"overlay": root / "k8s" / "overlays" / "example", "pki": root / "pki", "root": root}


@pytest.fixture(scope="module")
def rendered(k8s_copy) -> list[dict]:
    command = _kustomize_command()
    if command is None:
        return kustomize_lite.render(k8s_copy["overlay"])
    result = subprocess.run([*command, str(k8s_copy["overlay"])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict]) -> dict[str, dict]:
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "StatefulSet")}


def topology(docs: list[dict]) -> config.Topology:
    return config.topology_from_env(of_kind(docs, "ConfigMap")["sealstore-topology"]["data"])


def test_renders_and_validates_strictly_for_three_versions(rendered, tmp_path):
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds.count("HorizontalPodAutoscaler") == 2 and kinds.count("PodDisruptionBudget") == 3
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered))
    for version in K8S_VERSIONS:
        result = subprocess.run([VALIDATE, "--strict", "-k", version, str(path)], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, (version, result.stdout[-3000:], result.stderr[-3000:])
        assert result.stdout.count("passed") == len(rendered), (version, result.stdout[-2000:])
    # --strict really refuses what the API does not know.
    broken = [json.loads(json.dumps(d)) for d in rendered]
    of_kind(broken, "StatefulSet")["storage"]["spec"]["template"]["spec"]["containers"][0]["readOnlyRoot"] = True
    path.write_text(yaml.safe_dump_all(broken))
    result = subprocess.run([VALIDATE, "--strict", "-k", K8S_VERSIONS[0], str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and "readOnlyRoot" in result.stdout + result.stderr


def test_python_renderer_agrees_with_kustomize(rendered, k8s_copy):
    """Where kubectl is missing the tests render with kustomize_lite: it must give the same objects."""
    if _kustomize_command() is None:
        pytest.skip("no kubectl or kustomize to compare kustomize_lite with")
    hashed = {d["metadata"]["name"]: d["metadata"]["name"].rsplit("-", 1)[0] for d in rendered if d["kind"] == "Secret"}

    def unhash(value):
        if isinstance(value, dict):
            return {k: unhash(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unhash(v) for v in value]
        return hashed.get(value, value) if isinstance(value, str) else value

    def decoded(doc):  # kustomize wraps base64 lines; compare the bytes
        if doc["kind"] == "Secret":
            doc = {**doc, "data": {k: base64.b64decode(v) for k, v in doc["data"].items()}}
        return doc

    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    ours = sorted(map(decoded, kustomize_lite.render(k8s_copy["overlay"])), key=key)
    theirs = sorted(map(decoded, unhash(rendered)), key=key)
    assert [key(d) for d in ours] == [key(d) for d in theirs]
    for mine, real in zip(ours, theirs):
        assert mine == real, key(mine)


def test_roles_run_as_the_issue_asks(rendered):
    loads = workloads(rendered)
    for role, kind in ROLES.items():
        assert loads[role]["kind"] == kind, role
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(rendered, "HorizontalPodAutoscaler").values()}
    assert set(hpas) == {"gateway", "crypto"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    heal = loads["heal"]["spec"]
    assert heal["replicas"] == 1 and heal["strategy"]["type"] == "Recreate"  # one scanner, never two


def test_storage_set_names_every_pod_and_has_one_claim_per_drive(rendered):
    storage = workloads(rendered)["storage"]
    topo = topology(rendered)
    members = [str(m) for s in topo.storage_sets for m in s]
    assert members == [f"storage-{i}.storage:9111/0" for i in range(storage["spec"]["replicas"])]
    service = of_kind(rendered, "Service")[storage["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"  # stable per-pod DNS names
    command = storage["spec"]["template"]["spec"]["containers"][0]["command"]
    drives = command[command.index("--drives") + 1].split(",")
    claims = {c["metadata"]["name"] for c in storage["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in storage["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert sorted(mounts[c] for c in claims) == sorted(drives)


def test_storage_disruption_budget_never_exceeds_parity(rendered):
    topo = topology(rendered)
    storage = workloads(rendered)["storage"]
    budgets = [p for p in of_kind(rendered, "PodDisruptionBudget").values()
               if p["spec"]["selector"]["matchLabels"] == storage["spec"]["selector"]["matchLabels"]]
    assert len(budgets) == 1
    max_unavailable = budgets[0]["spec"]["maxUnavailable"]
    assert isinstance(max_unavailable, int)  # a percentage would grow with the replicas
    assert max_unavailable <= topo.parity_shards
    # Stricter: a drain keeps the write quorum of every set, not only the read quorum.
    assert max_unavailable <= topo.set_size - topo.write_quorum


def _private_keys(secret: dict) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
    return {k: v for k, v in data.items() if b"PRIVATE KEY" in v}


def test_one_secret_per_role_each_with_its_own_keys_and_never_the_ca_key(rendered, k8s_copy):
    ca_key = (k8s_copy["pki"] / "certs" / "ca-key.pem").read_bytes()
    secrets = of_kind(rendered, "Secret")
    mounted_by: dict[str, set[str]] = {}
    for name, load in workloads(rendered).items():
        spec = load["spec"]["template"]["spec"]
        for volume in spec["volumes"]:
            if "secret" in volume:
                mounted_by.setdefault(volume["secret"]["secretName"], set()).add(name)
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    mounted_by.setdefault(ref["name"], set()).add(name)
    assert set(mounted_by) == set(secrets)
    for name, secret in secrets.items():
        assert len(mounted_by[name]) == 1, (name, mounted_by[name])  # one role per Secret
        role = next(iter(mounted_by[name]))
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert ca_key not in data.values() and "ca-key.pem" not in data, name
        keys = _private_keys(secret)
        if secret.get("type") == "kubernetes.io/tls":
            assert set(keys) == {"tls.key"}, name
            continue
        if not keys:  # the root S3 credentials, nothing else
            assert set(data) == {"user", "password"} and role == "gateway", name
            continue
        assert data["ca.pem"] == (k8s_copy["pki"] / "certs" / "ca.pem").read_bytes()
        replicas = workloads(rendered)[role]["spec"]["replicas"] if role == "storage" else 1
        assert len(keys) == replicas, (name, sorted(keys))
        for key_name, key_pem in keys.items():
            instance = key_name.removesuffix("-key.pem")
            assert tls.role_of_instance(instance) == role, (name, key_name)
            cert = x509.load_pem_x509_certificate(data[f"{instance}.pem"])
            key = serialization.load_pem_private_key(key_pem, None)
            assert cert.public_key().public_numbers() == key.public_key().public_numbers(), key_name
            assert tls.principal_of(data[f"{instance}.pem"]).role == role
    # The admin certificate (kms admin, heal, rewrap) stays with the operator.
    assert not any("admin" in k for s in secrets.values() for k in s["data"])


def test_pods_are_non_root_read_only_limited_and_probed_over_their_own_tls(rendered):
    topo_env = of_kind(rendered, "ConfigMap")["sealstore-topology"]["data"]
    for name, load in workloads(rendered).items():
        spec = load["spec"]["template"]["spec"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]), name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = container[probe]["exec"]["command"]
                assert command[:2] == ["sealstore", "probe"], (name, probe)
                build_parser().parse_args(command[1:])  # the image's command line accepts it
            env = {**topo_env, **{e["name"]: e.get("value") for e in container.get("env", [])}}
            instance = env.get("SEALSTORE_INSTANCE") or f"{name}-0"
            assert tls.role_of_instance(instance) == name, (name, instance)
            if name in ("kms", "storage"):  # their certificates may not dial: the TLS health socket
                assert env["SEALSTORE_HEALTH_SOCKET"].startswith("/tmp/"), name


def test_images_come_from_the_overlay(rendered):
    images = {c["image"] for load in workloads(rendered).values() for c in load["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/sealstore:0.1.0"}


# ---------------------------------------------------------------------------------- compose

COMPOSE_INSTANCES = {"kms": "kms", "admin": "admin", "crypto-0": "crypto-0", "crypto-1": "crypto-1",
                     "gateway": "gateway-0", "heal": "heal-0", "storage-0": "storage-0", "storage-1": "storage-1",
                     "storage-2": "storage-2", "storage-3": "storage-3"}


def compose_file() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_builds_its_image_from_a_base_given_as_build_argument():
    services = compose_file()["services"]
    builders = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(builders) == {"init", "openbao"}
    build = builders["init"]
    assert (DEPLOY / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).exists()
    assert build["args"]["BASE_IMAGE"] == "${SEALSTORE_BASE_IMAGE:-python:3.11-slim}"
    dockerfile = (REPO / build["dockerfile"]).read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    # Every other service runs the image init builds, and never pulls it.
    for name, service in services.items():
        if name != "openbao":
            assert service["image"] == services["init"]["image"], name
            assert service["pull_policy"] in ("never", "build"), name


def test_compose_runs_every_service_with_one_topology_and_health_checks():
    compose = compose_file()
    services = compose["services"]
    assert set(COMPOSE_INSTANCES) | {"init", "openbao"} == set(services)
    env = compose["x-sealstore"]["environment"]
    members = env["SEALSTORE_STORAGE_SET"].split(",")
    assert [m.split(":")[0] for m in members] == [f"storage-{i}" for i in range(4)]
    assert env["SEALSTORE_CRYPTO_ADDRS"].split(",") == ["crypto-0:9102", "crypto-1:9102"]
    for name in COMPOSE_INSTANCES:
        service = services[name]
        if name != "admin":
            role = tls.role_of_instance(COMPOSE_INSTANCES[name])
            assert service["command"][:3] == ["python", "-m", f"services.{role}"], name
            assert service["healthcheck"]["test"][:3] == ["CMD", "sealstore", "probe"], name
            if role in ("kms", "storage"):
                assert service["environment"]["SEALSTORE_HEALTH_SOCKET"], name
    assert services["gateway"]["ports"] == ["${SEALSTORE_PORT:-9000}:9000", "${SEALSTORE_HTTPS_PORT:-9443}:9443"]
    # One named volume per drive.
    for i in range(4):
        assert f"storage-{i}-drive1:/data/drive1" in services[f"storage-{i}"]["volumes"]
    assert services["openbao"]["profiles"] == ["openbao"]


def test_compose_gives_each_container_only_its_own_bundle():
    services = compose_file()["services"]
    pki_users = [name for name, s in services.items() if any(str(v).startswith("pki:") for v in s.get("volumes", []))]
    assert pki_users == ["init"]  # the CA key lives in the pki volume only
    for name, instance in COMPOSE_INSTANCES.items():
        service = services[name]
        volumes = [str(v) for v in service.get("volumes", [])]
        bundles = [v for v in volumes if v.startswith("bundle-")]
        assert bundles == [f"bundle-{instance}:/secrets:ro"], name
        env = service["environment"]
        assert env["SEALSTORE_INSTANCE"] == instance, name
        assert ("SEALSTORE_ROOT_USER" in env) == (name == "gateway"), name
    init_targets = {str(v).split(":")[1] for v in services["init"]["volumes"] if str(v).startswith("bundle-")}
    assert init_targets == {f"/bundles/{i}" for i in COMPOSE_INSTANCES.values()}
    assert "--crypto-workers 2" in " ".join(services["init"]["command"])
