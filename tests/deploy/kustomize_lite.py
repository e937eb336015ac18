"""Renders deploy/k8s's overlays where neither `kubectl kustomize` nor `kustomize` is installed (no
kustomize wheel exists on PyPI). It implements the features deploy/k8s uses and no more:
resources (files and bases), namespace, labels without selectors, images, JSON 6902 patches with
add/replace, secretGenerator (files, envs, type; no hash suffix) and generatorOptions labels. Any
other field is refused, so the manifests cannot silently outgrow it; when kubectl is there,
tests/deploy/test_manifests.py checks that both render the same objects."""
from __future__ import annotations

import base64
import copy
from pathlib import Path

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches", "secretGenerator",
         "generatorOptions"}
CLUSTER_SCOPED = {"Namespace"}


def render(folder: Path) -> list[dict]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{folder}: kustomize_lite does not implement {sorted(unknown)}")
    docs: list[dict] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    options = spec.get("generatorOptions", {})
    for generator in spec.get("secretGenerator", []):
        data = {}
        for item in generator.get("files", []):
            data[Path(item).name] = base64.b64encode((folder / item).read_bytes()).decode()
        for item in generator.get("envs", []):
            for line in (folder / item).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = base64.b64encode(value.encode()).decode()
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"]},
                  "type": generator.get("type", "Opaque"), "data": data}
        if options.get("labels"):
            secret["metadata"]["labels"] = dict(options["labels"])
        docs.append(secret)
    for patch in spec.get("patches", []):
        target = patch["target"]
        for doc in docs:
            if doc["kind"] == target.get("kind", doc["kind"]) and doc["metadata"]["name"] == target["name"]:
                for op in yaml.safe_load(patch["patch"]):
                    _apply(doc, op)
    for image in spec.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                if container.get("image", "").split(":")[0] == image["name"].split(":")[0] or \
                        container.get("image") == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'].split(':')[0])}:{image['newTag']}"
    for label in spec.get("labels", []):
        if label.get("includeSelectors"):
            raise ValueError("kustomize_lite: labels with includeSelectors are not implemented")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    if spec.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _containers(doc: dict) -> list[dict]:
    template = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*template.get("initContainers", []), *template.get("containers", [])]


def _apply(doc: dict, op: dict) -> None:
    if op["op"] not in ("add", "replace"):
        raise ValueError(f"kustomize_lite: patch op {op['op']} is not implemented")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(op["value"])
    else:
        node[last] = copy.deepcopy(op["value"])
