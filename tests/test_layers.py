"""Imports point down the layers (docs/architecture.md, "Layers"):

- L0 `sealstore` (but sealstore.erasure): the core library; imports only L0;
- L1 `sealstore.erasure`: the erasure layer; imports L0 and L1;
- L2 `services.<name>`: one service; imports L0, L1 and its own package, never another service;
- L3 `sealctl`: the command line and the launcher; imports anything.

Every import counts, module level or inside a function (a late import is still a dependency).
tests/ and bench/ are not layers and may import anything.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERED_PACKAGES = ("sealstore", "services", "sealctl")


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import statement anywhere in the module. For
    `from X import Y` both X and X.Y are given: Y may be a submodule (`from sealstore import erasure`)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
    return found


def layer_of(module: str) -> str | None:
    """"L0".."L3" for a module of the layered packages; None for anything else (stdlib,
    third-party, tests, bench)."""
    top = module.split(".")[0]
    if top == "sealstore":
        return "L1" if module == "sealstore.erasure" or module.startswith("sealstore.erasure.") else "L0"
    if top == "services":
        return "L2"
    if top == "sealctl":
        return "L3"
    return None


def _service_of(module: str) -> str:
    """`services.crypto.dare` -> `services.crypto`; `services` itself -> `services`."""
    return ".".join(module.split(".")[:2])


def allowed(importer: str, imported: str) -> bool:
    target = layer_of(imported)
    if target is None:
        return True
    source = layer_of(importer)
    if source == "L3":
        return True
    if source == "L2":
        if target == "L2":
            # The bare `services` namespace package holds nothing to depend on.
            return imported == "services" or _service_of(imported) == _service_of(importer)
        return target in ("L0", "L1")
    if source == "L1":
        return target in ("L0", "L1")
    if source == "L0":
        return target == "L0"
    return True


def violations(root: Path) -> list[Violation]:
    """Every upward (or sideways, between services) import in the layered packages under `root`."""
    found = []
    for package in LAYERED_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(root, path)
            tree = ast.parse(path.read_bytes(), filename=str(path))
            for line, imported in _imported_names(tree, module, path.name == "__init__.py"):
                if not allowed(module, imported):
                    found.append(Violation(module, line, imported))
    return found


def test_the_repository_imports_only_downwards():
    found = violations(REPO)
    assert not found, "imports that point up the layers:\n" + "\n".join(map(str, found))


def test_every_layer_has_modules():
    """The walk sees the real packages (a wrong root would find nothing and pass)."""
    modules = {_module_name(REPO, p) for pkg in LAYERED_PACKAGES for p in (REPO / pkg).rglob("*.py")}
    assert {layer_of(m) for m in modules} == {"L0", "L1", "L2", "L3"}
    assert {"sealstore.erasure.client", "sealstore.erasure.heal", "services.crypto.put_pipeline",
            "sealctl.main"} <= modules


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for package in LAYERED_PACKAGES:
        (root / package).mkdir(exist_ok=True)
    return root


def test_planted_violations_are_found(tmp_path):
    root = _tree(tmp_path, {
        "sealstore/__init__.py": "",
        "sealstore/config.py": "import os\nfrom sealstore import errors\n",
        "sealstore/errors.py": "",
        # L0 -> L1, inside a function: still a dependency.
        "sealstore/cli.py": "def main():\n    from sealstore.erasure import heal\n",
        # L0 -> L3 through a relative-looking absolute import.
        "sealstore/rewrap.py": "import sealctl.keys\n",
        "sealstore/erasure/__init__.py": "",
        "sealstore/erasure/client.py": "from sealstore import config\nfrom . import quorum\n",
        "sealstore/erasure/quorum.py": "",
        # L1 -> L2, as the old erasure_heal did.
        "sealstore/erasure/heal.py": "from services.crypto.erasure import StripeCoder\n",
        "services/__init__.py": "",
        "services/crypto/__init__.py": "",
        "services/crypto/erasure.py": "from sealstore.erasure import client\nfrom . import dare\n",
        "services/crypto/dare.py": "",
        # L2 -> another service, relative: `..kms` from services.crypto.keys is services.kms.
        "services/crypto/keys.py": "from ..kms import ciphertext\n",
        "services/kms/__init__.py": "",
        "services/kms/ciphertext.py": "",
        # L2 -> L3.
        "services/kms/server.py": "from sealctl import launcher\n",
        "sealctl/__init__.py": "",
        "sealctl/launcher.py": "import services.kms.server\nimport sealstore.erasure.heal\n",
    })
    found = {(v.module, v.imported) for v in violations(root)}
    assert found == {
        ("sealstore.cli", "sealstore.erasure"), ("sealstore.cli", "sealstore.erasure.heal"),
        ("sealstore.rewrap", "sealctl.keys"),
        ("sealstore.erasure.heal", "services.crypto.erasure"),
        ("sealstore.erasure.heal", "services.crypto.erasure.StripeCoder"),
        ("services.crypto.keys", "services.kms"), ("services.crypto.keys", "services.kms.ciphertext"),
        ("services.kms.server", "sealctl"), ("services.kms.server", "sealctl.launcher"),
    }


def test_a_clean_tree_passes(tmp_path):
    root = _tree(tmp_path, {
        "sealstore/__init__.py": "", "sealstore/errors.py": "import grpc\n",
        "sealstore/erasure/__init__.py": "", "sealstore/erasure/quorum.py": "from sealstore import errors\n",
        "services/__init__.py": "", "services/heal/__init__.py": "",
        "services/heal/healer.py": "from sealstore.erasure import quorum\nfrom services.heal import x\n",
        "sealctl/__init__.py": "", "sealctl/main.py": "from services.heal import healer\n",
    })
    assert violations(root) == []
