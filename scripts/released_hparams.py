"""Extract every hyperparameter of the released PAPO training scripts into tests/data/released_scripts.yaml.

The released code (github.com/MikeWangWZHL/PAPO, an EasyR1 fork) configures a run in three layers; this
script resolves them for each ``examples/papo_{grpo,dapo}/*.sh`` and records where each value comes from:

1. the dataclass defaults of ``verl/trainer/config.py`` and ``verl/workers/**/config.py`` (read with ``ast``,
   nothing is imported), ``from: default <file>``;
2. the YAML config file the script passes as ``config=...``, ``from: <config file>``;
3. the ``key=value`` overrides on the script's command line (shell variables substituted),
   ``from: <script>``.

Fields declared ``init=False`` or overwritten in ``PPOConfig.post_init`` (copies of other keys) and the unused
critic are left out.

    python scripts/released_hparams.py --git-dir <clone or mirror of MikeWangWZHL/PAPO> [--commit HEAD] \\
        > tests/data/released_scripts.yaml

``tests/test_released_scripts.py`` compares every published experiment config with this file, key by key.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import subprocess
import sys
from typing import Any

import yaml

#: dataclass -> (file, key prefix); nested dataclass fields are followed through DATACLASS_FIELDS
ROOTS = {
    "DataConfig": ("verl/trainer/config.py", "data"),
    "AlgorithmConfig": ("verl/trainer/config.py", "algorithm"),
    "TrainerConfig": ("verl/trainer/config.py", "trainer"),
    "ActorConfig": ("verl/workers/actor/config.py", "worker.actor"),
    "RefConfig": ("verl/workers/actor/config.py", "worker.ref"),
    "RolloutConfig": ("verl/workers/rollout/config.py", "worker.rollout"),
    "RewardConfig": ("verl/workers/reward/config.py", "worker.reward"),
}
NESTED = {"ModelConfig", "OptimConfig", "FSDPConfig", "OffloadConfig"}  # in verl/workers/actor/config.py
SCRIPT_DIRS = ("examples/papo_grpo", "examples/papo_dapo")


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], check=True, capture_output=True, text=True
    ).stdout


def _classes(source: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}


def _field_default(value: ast.expr | None) -> tuple[str, Any]:
    """("value", v) | ("nested", ClassName) | ("skip", None) for a dataclass field's right-hand side."""
    if value is None:
        return "skip", None
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        kw = {k.arg: k.value for k in value.keywords}
        if "init" in kw and isinstance(kw["init"], ast.Constant) and kw["init"].value is False:
            return "skip", None
        if "default_factory" in kw:
            name = getattr(kw["default_factory"], "id", None)
            if name in ("dict", "list"):
                return "value", {} if name == "dict" else []
            return "nested", name
        if "default" in kw:
            return "value", _plain(ast.literal_eval(kw["default"]))
        return "skip", None
    return "value", _plain(ast.literal_eval(value))


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML has no tuples)."""
    return list(value) if isinstance(value, tuple) else value


def _defaults(git_dir: str, commit: str) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    sources: dict[str, dict[str, ast.ClassDef]] = {}

    def walk(cls: str, path: str, prefix: str) -> None:
        if path not in sources:
            sources[path] = _classes(_git(git_dir, "show", f"{commit}:{path}"))
        for node in sources[path][cls].body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            kind, value = _field_default(node.value)
            key = f"{prefix}.{node.target.id}"
            if kind == "nested" and value in NESTED:
                walk(value, "verl/workers/actor/config.py", key)
            elif kind == "value":
                out[key] = (value, f"default {path}")

    for cls, (path, prefix) in ROOTS.items():
        walk(cls, path, prefix)
    return out


def _derived(git_dir: str, commit: str) -> set[str]:
    """Keys that ``PPOConfig.post_init`` overwrites from other keys (``self.worker.actor.kl_coef = ...``)."""
    cls = _classes(_git(git_dir, "show", f"{commit}:verl/trainer/config.py"))["PPOConfig"]
    post_init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "post_init")
    out = set()
    for node in ast.walk(post_init):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                out.add(ast.unparse(target).removeprefix("self."))
    return out


def _flatten(node: Any, leaves: set[str], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a config file, stopping at the dataclass fields (dict-valued fields stay dicts)."""
    if isinstance(node, dict) and prefix not in leaves:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, leaves, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


_ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S+)\s*$")
_OVERRIDE = re.compile(r"^\s*([a-z_][\w.]*)=(\S+?)\s*\\?\s*$")


def _script_overrides(text: str) -> dict[str, str]:
    variables: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for line in text.splitlines():
        m = _ASSIGN.match(line.strip())
        if m and not line.startswith(" "):
            variables[m.group(1)] = re.sub(
                r"\$\{(\w+)\}", lambda v: variables[v.group(1)], m.group(2).strip('"')
            )
            continue
        m = _OVERRIDE.match(line)
        if m:
            value = re.sub(r"\$\{(\w+)\}", lambda v: variables[v.group(1)], m.group(2))
            overrides[m.group(1)] = value
    return overrides


def _typed(value: str) -> Any:
    parsed = yaml.safe_load(value)
    return parsed if not isinstance(parsed, (dict, list)) else value


def extract(git_dir: str, commit: str) -> dict[str, Any]:
    sha = _git(git_dir, "rev-parse", commit).strip()
    derived = _derived(git_dir, sha)
    defaults = {k: v for k, v in _defaults(git_dir, sha).items() if k not in derived}
    files = _git(git_dir, "ls-tree", "-r", "--name-only", sha, *SCRIPT_DIRS).split()
    scripts: dict[str, Any] = {}
    for path in sorted(f for f in files if f.endswith(".sh")):
        overrides = _script_overrides(_git(git_dir, "show", f"{sha}:{path}"))
        config = overrides.pop("config")
        values = {k: {"value": copy.deepcopy(v), "from": src} for k, (v, src) in defaults.items()}
        for k, v in _flatten(yaml.safe_load(_git(git_dir, "show", f"{sha}:{config}")), set(defaults)).items():
            if k not in derived:
                values[k] = {"value": v, "from": config}
        for k, v in overrides.items():
            values[k] = {"value": _typed(v), "from": path}
        name = path.rsplit("/", 1)[1].removesuffix(".sh")
        scripts[name] = {"script": path, "config": config, "values": dict(sorted(values.items()))}
    return {"repository": "MikeWangWZHL/PAPO", "commit": sha, "scripts": scripts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", required=True, help="a clone's .git directory or a bare mirror")
    parser.add_argument("--commit", default="HEAD")
    args = parser.parse_args(argv)
    header = (
        "# Hyperparameters of the released PAPO training scripts, resolved from the scripts, their config files and\n"
        "# the dataclass defaults (generated by scripts/released_hparams.py; do not edit by hand).\n"
    )
    sys.stdout.write(
        header
        + yaml.safe_dump(
            extract(args.git_dir, args.commit), sort_keys=False, width=120, default_flow_style=None
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
