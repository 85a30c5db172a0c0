"""Architecture rules: the import-linter contracts of pyproject.toml (``[tool.importlinter]``) hold.

Each contract runs on its own (``lint-imports --contract <id>``), so a failure names the rule that broke and
lint-imports' output shows the import chain. A second test keeps the "papo.algos imports only torch" rule
complete: every third-party package that papo imports anywhere, except torch, must be on that contract's
forbidden list.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {c["id"]: c for c in CONFIG["contracts"]}


def _lint_imports(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command as c; c()",
            "--no-cache",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("contract_id", sorted(CONTRACTS))
def test_import_contract_is_kept(contract_id: str) -> None:
    result = _lint_imports("--contract", contract_id)
    assert result.returncode == 0, f"{CONTRACTS[contract_id]['name']}: BROKEN\n{result.stdout}{result.stderr}"
    assert "KEPT" in result.stdout


def test_algos_contract_forbids_every_third_party_package_but_torch() -> None:
    graph = grimp.build_graph("papo", include_external_packages=True)
    third_party = {
        m.split(".")[0]
        for m in graph.modules
        if not m.startswith("papo") and m.split(".")[0] not in sys.stdlib_module_names
    }
    forbidden = set(CONTRACTS["algos-pure"]["forbidden_modules"])
    missing = sorted(third_party - forbidden - {"torch"})
    assert not missing, f"add {missing} to forbidden_modules of contract 'algos-pure' in pyproject.toml"
