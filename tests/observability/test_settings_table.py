"""The README's settings table against the code: every SEALSTORE_* variable a service or the
command line reads is in the table, and the table names none that the code does not read."""
from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from services.gateway.limits import Limits

REPO = Path(__file__).resolve().parents[2]
CODE = ("sealstore", "services", "sealctl")
NAME = re.compile(r"SEALSTORE_[A-Z0-9_]*[A-Z0-9]")


def names_in_code() -> dict[str, str]:
    """Each variable name the code spells out whole, with a file that spells it; plus the gateway's
    limits, whose names are made from their fields (services/gateway/limits.py)."""
    found: dict[str, str] = {}
    for package in CODE:
        for path in sorted((REPO / package).rglob("*.py")):
            if "/v1/" in path.as_posix():
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
                    found.setdefault(node.value, str(path.relative_to(REPO)))
    for f in fields(Limits):
        found.setdefault("SEALSTORE_GATEWAY_" + f.name.upper(), "services/gateway/limits.py")
    return found


def table_rows() -> dict[str, tuple[str, str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(SEALSTORE_[A-Z0-9_]+)` \|([^|]*)\|(.*)\|$", line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} is in the table twice"
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return rows


def test_the_scan_finds_variables_read_in_each_layer():
    found = names_in_code()
    # One read through a constant in each place the scan must reach: L0, a service, the limits
    # built from field names, the launcher. A scan that found none of these would pass vacuously.
    for name in ("SEALSTORE_DATA_DIR", "SEALSTORE_KMS_CACHE_ANY", "SEALSTORE_GATEWAY_IDLE_TIMEOUT",
                 "SEALSTORE_BASE_PORT", "SEALSTORE_SHUTDOWN_GRACE"):
        assert name in found
    assert len(found) > 40


def test_every_variable_the_code_reads_is_in_the_readme_table():
    rows = table_rows()
    missing = {name: where for name, where in names_in_code().items() if name not in rows}
    assert not missing, f"add these to README.md's Settings table (name, default, meaning): {missing}"


def test_the_table_names_no_variable_the_code_does_not_read():
    code = names_in_code()
    stale = sorted(name for name in table_rows() if name not in code)
    assert not stale, f"README.md's Settings table names variables no code reads: {stale}"


def test_every_row_says_what_it_means():
    for name, (_default, meaning) in table_rows().items():
        assert len(meaning) >= 8, f"{name}: the meaning column is empty"
