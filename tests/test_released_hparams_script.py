"""scripts/released_hparams.py's parsing of the released code: shell overrides with variables, dataclass field
defaults (nested dataclasses, init=False skipped, tuples as lists) and config flattening down to the fields."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import released_hparams as rh

SCRIPT = """#!/bin/bash
set -x
N_GPU=2
ROLLOUT_BATCH_SIZE=384
EXP_NAME="run_rb${ROLLOUT_BATCH_SIZE}"
KL_PRCP_COEF=0.01
CUDA_VISIBLE_DEVICES=0,1 python3 -m verl.trainer.main \\
    config=examples/configs/config_grpo_papo.yaml \\
    data.rollout_batch_size=${ROLLOUT_BATCH_SIZE} \\
    trainer.experiment_name=${EXP_NAME} \\
    trainer.n_gpus_per_node=${N_GPU} \\
    algorithm.kl_prcp_coef=${KL_PRCP_COEF} \\
    algorithm.disable_kl=true
"""


def test_script_overrides_substitute_shell_variables() -> None:
    out = rh._script_overrides(SCRIPT)
    assert out == {
        "config": "examples/configs/config_grpo_papo.yaml",
        "data.rollout_batch_size": "384",
        "trainer.experiment_name": "run_rb384",
        "trainer.n_gpus_per_node": "2",
        "algorithm.kl_prcp_coef": "0.01",
        "algorithm.disable_kl": "true",
    }
    assert [rh._typed(v) for v in ("384", "0.01", "true", "a.jinja")] == [384, 0.01, True, "a.jinja"]


def test_dataclass_field_defaults() -> None:
    cls = ast.parse(
        "class C:\n"
        "    lr: float = 1e-6\n"
        "    betas: tuple = (0.9, 0.999)\n"
        "    model: M = field(default_factory=ModelConfig)\n"
        "    extra: dict = field(default_factory=dict)\n"
        "    auto: int = field(default=-1, init=False)\n"
    ).body[0]
    got = [rh._field_default(node.value) for node in cls.body]
    assert got == [
        ("value", 1e-6),
        ("value", [0.9, 0.999]),
        ("nested", "ModelConfig"),
        ("value", {}),
        ("skip", None),
    ]


def test_config_flattens_down_to_the_dataclass_fields() -> None:
    cfg = {"algorithm": {"aug_config": {"patch_size": 14}, "kl_coef": 0.01}, "worker": {"rollout": {"n": 5}}}
    leaves = {"algorithm.aug_config", "algorithm.kl_coef", "worker.rollout.n"}
    assert rh._flatten(cfg, leaves) == {
        "algorithm.aug_config": {"patch_size": 14},
        "algorithm.kl_coef": 0.01,
        "worker.rollout.n": 5,
    }
