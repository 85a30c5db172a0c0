"""Integration: a tiny training run (CSV logger, default callbacks), then ``src/eval.py``'s ``evaluate`` on its
checkpoint. Checks the JSON/Markdown outputs, the training-time diagnostics (val/kl_prcp, per-token KL
statistics, collapse-detector metrics, validation sample files) and that a mismatched model is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import compose_cfg
from papo.config import ConfigError
from papo.evaluation.evaluator import evaluate
from papo.pipeline import train

EVAL_OVERRIDES = [
    "data.val_batch_size=8",
    "data.train_dataset.size=64",
    "data.val_dataset.size=8",
    "data.test_dataset.size=8",
    "rollout.max_new_tokens=8",
    "warm_start.max_steps=3",
    "warm_start.batch_size=8",
    "eval.samples=2",
    "eval.limit=6",
    "eval.num_samples_shown=3",
    "eval.device=cpu",
]


def eval_cfg(overrides: list[str], out: Path, cache_dir: Path):
    cfg = compose_cfg(EVAL_OVERRIDES + overrides, config_name="eval")
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.model.cache_dir = str(cache_dir / "models")
    return cfg


@pytest.mark.slow
def test_train_then_eval_checkpoint(
    make_cfg, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(
        make_cfg(
            [
                "logger=csv",
                "validate_before=false",
                "callbacks.sample_table.num_samples=2",
                "rollout.val_kl_max_prompts=4",
            ]
        )
    )
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.exists()

    with (tmp_path / "csv" / "metrics.csv").open() as f:
        keys = {k for r in csv.DictReader(f) for k, v in r.items() if v not in ("", None)}
    for key in (
        "train/perception_kl/kl_token_mean",
        "train/perception_kl/kl_token_max",
        "train/perception_kl/kl_token_var",
        "train/collapse/score",
        "train/collapse/flag",
        "val/kl_prcp",
        "val/kl_prcp_by_vd/high",
        "val/format_masked",
        "val/response_length_masked",
    ):
        assert key in keys, f"{key} not logged"
    md_files = sorted((tmp_path / "val_samples").glob("step*.md"))
    assert md_files and "![](images/" in md_files[-1].read_text()  # no W&B: samples as Markdown

    out = tmp_path / "eval_out"
    # eval starts its loggers as training does (papo.utils.wandb_setup.start_loggers: W&B offline fallback)
    from papo.utils import wandb_setup

    started: list = []
    start_loggers = wandb_setup.start_loggers
    monkeypatch.setattr(wandb_setup, "start_loggers", lambda cfg: started.append(cfg) or start_loggers(cfg))
    result = evaluate(eval_cfg([f"ckpt_path={ckpt}", "eval.split=val", "logger=csv"], out, cache_dir))
    assert [list(c) for c in started] == [["csv"]]
    with (out / "csv" / "metrics.csv").open() as f:
        assert "eval/val/greedy/acc" in next(csv.reader(f))
    assert result["num_prompts"] == 6
    metrics = json.loads((out / "eval_val_last.json").read_text())["metrics"]
    for proto in ("greedy", "avg@2"):
        for key in (
            "acc",
            "acc_masked",
            "vision_gap",
            "reward",
            "reward_masked",
            "reward_gap",
            "format",
            "format_masked",
            "response_length",
            "response_length_masked",
            "kl_prcp",
        ):
            assert f"{proto}/{key}" in metrics, f"{proto}/{key} missing"
        assert any(k.startswith(f"{proto}/acc_by_task/") for k in metrics)
        assert any(k.startswith(f"{proto}/acc_masked_by_vd/") for k in metrics)
        assert any(k.startswith(f"{proto}/vision_gap_by_vd/") for k in metrics)
        assert 0.0 <= metrics[f"{proto}/acc"] <= 1.0 and metrics[f"{proto}/kl_prcp"] >= 0.0
    md = (out / "eval_val_last.md").read_text()
    assert "| acc |" in md and "## Per vision dependency" in md
    assert (tmp_path / "eval" / "eval_val_last.json").exists()  # also next to the training run
    assert (out / "eval_val_last_samples" / "samples.md").exists()

    # a checkpoint of another model than the configured one is refused before anything loads (the run's model
    # config is stored in its checkpoints: papo.utils.resume_config)
    with pytest.raises(ConfigError, match=r"model\.size='small' differs from the run of ckpt_path="):
        evaluate(eval_cfg([f"ckpt_path={ckpt}", "model.size=small"], tmp_path / "bad", cache_dir))
