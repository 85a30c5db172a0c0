"""Several validation sets in one run (val_sets): each set's protocol and keys (val/<name>/...), the group averages,
the per-benchmark table, one val dataloader per set, a training run that logs them, and src/eval.py on PAPO's suite
(the fixture tests/data/papo_eval) with the per-benchmark table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import compose_cfg
from papo.config import RolloutConfig, parse_group
from papo.evaluation import validation
from papo.evaluation.val_sets import SamplingProtocol, ValSet
from papo.evaluation.validation import ValidationSuite
from test_eval_metrics import _batch, make_exp

FIXTURE = Path(__file__).parent / "data" / "papo_eval"


def _suite(sets: list[ValSet] | None) -> ValidationSuite:
    return ValidationSuite(parse_group(RolloutConfig, compose_cfg([]).rollout, "rollout"), sets)


def test_each_set_has_its_protocol_keys_and_averages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "attach_masked_view", lambda processor, batch, rows: True)
    sets = [
        ValSet("geo", None, "general", protocol=SamplingProtocol(samples=4, temperature=0.7, greedy=True)),
        ValSet("count", None, "vision_dependent", protocol=SamplingProtocol(samples=2, greedy=False)),
        ValSet("vista", None, "general", protocol=SamplingProtocol(greedy=True, max_new_tokens=5)),
    ]
    suite = _suite(sets)
    calls: list[tuple[int, float, int, int, bool]] = []
    accuracy = {0: [1.0, 1.0], 1: [1.0, 0.0], 2: [0.0, 0.0]}  # per set: the real image's accuracy

    def generate_for(idx: int):
        def generate(cfg, masked: bool):
            calls.append((idx, cfg.temperature, cfg.num_samples, cfg.max_new_tokens, masked))
            return make_exp([0.0, 0.0] if masked else accuracy[idx], ["t"] * 2, ["high"] * 2)

        return generate

    def kl(rows):
        return torch.ones(len(rows)), torch.ones(len(rows))

    suite.reset()
    outs = [suite.step(_batch(2), 0, generate_for(i), kl, None, dataloader_idx=i) for i in range(3)]
    max_new = compose_cfg([]).rollout.max_new_tokens
    assert calls == [
        (0, 0.0, 1, max_new, False), (0, 0.0, 1, max_new, True),  # greedy: the main protocol
        (0, 0.7, 4, max_new, False), (0, 0.7, 4, max_new, True),  # avg@4
        (1, 1.0, 2, max_new, False), (1, 1.0, 2, max_new, True),  # avg@2 alone: the main protocol
        (2, 0.0, 1, 5, False), (2, 0.0, 1, 5, True),
    ]  # fmt: skip
    assert all(o.kl_prcp == pytest.approx(1.0) for o in outs)
    m = suite.compute()
    assert m["val/geo/acc"] == 1.0 and m["val/geo/sampled/acc"] == 1.0 and m["val/geo/kl_prcp"] == 1.0
    assert (
        m["val/count/sampled/acc"] == 0.5
        and m["val/count/sampled/kl_prcp"] == 1.0
        and "val/count/acc" not in m
    )
    assert m["val/vista/acc"] == 0.0 and "val/acc" not in m
    # averages: per group over the sets that have the metric, overall over all of them
    assert m["val/average/general/acc"] == 0.5 and m["val/average/overall/acc"] == 0.5
    assert m["val/average/vision_dependent/sampled/acc"] == 0.5
    assert m["val/average/overall/sampled/acc"] == pytest.approx(0.75)
    assert "val/average/vision_dependent/acc" not in m
    keys = suite.headline_keys()
    assert "val/count/sampled/acc" in keys and "val/average/overall/acc" in keys
    table = suite.table(m, {"geo": 2, "count": 2, "vista": 2}).splitlines()
    assert table[0] == (
        "| benchmark | group | n | greedy acc | greedy acc_masked | greedy vision_gap | avg@k acc | "
        "avg@k acc_masked | avg@k vision_gap |"
    )
    assert "| geo | general | 2 | 100.00 | 0.00 | 100.00 | 100.00 | 0.00 | 100.00 |" in table
    assert "| count | vision_dependent | 2 | - | - | - | 50.00 | 0.00 | 50.00 |" in table
    assert table[-1] == "| **overall average** | | | 50.00 | 0.00 | 50.00 | 75.00 | 0.00 | 75.00 |"


def test_without_val_sets_the_single_set_keys_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "attach_masked_view", lambda processor, batch, rows: True)
    suite = _suite(None)

    def generate(cfg, masked: bool):
        return make_exp([0.0, 1.0], ["t"] * 2, ["high"] * 2)

    suite.reset()
    suite.step(_batch(2), 0, generate, lambda rows: (torch.ones(len(rows)), torch.ones(len(rows))), None)
    m = suite.compute()
    assert m["val/acc"] == 0.5 and "val/sampled/acc" in m and not any(k.startswith("val/average") for k in m)
    assert suite.headline_keys() == []


def test_datamodule_gives_one_val_loader_per_set() -> None:
    from papo.data.datamodule import PapoDataModule
    from papo.data.synthetic import build_synthetic_split

    dm = PapoDataModule(
        train_dataset=lambda: build_synthetic_split("train", 8, seed=0),
        val_dataset=lambda: pytest.fail("data.val_dataset is not built when val sets are given"),
        val_sets={
            "b": lambda: build_synthetic_split("val", 6, seed=1),
            "a": build_synthetic_split("test", 5, seed=2),
        },
        val_set_limits={"b": 3},
        val_batch_size=2,
        batch_size=4,
    )
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [3, 5]  # in the order given; b cut to its limit
    assert dm.val_set_sizes() == {"b": 3, "a": 5}
    assert loaders[0].dataset.dataset_name == "b" and len(next(iter(loaders[1]))["prompt"]) == 2


def _two_sets(cfg) -> dict:
    val = OmegaConf.to_container(cfg.data.val_dataset, resolve=True)
    return {
        "count": {"group": "general", "limit": 4, "dataset": val, "protocol": {"greedy": True, "samples": 2}},
        "other": {
            "group": "vision_dependent",
            "dataset": {**val, "seed": 5},
            "protocol": {"greedy": False, "samples": 2, "max_new_tokens": 4},
        },
    }


def test_a_training_run_validates_every_set(make_cfg, tmp_path: Path) -> None:
    from papo.pipeline import VAL_SETS_TABLE, train

    cfg = make_cfg(["logger=csv", "trainer.max_steps=1"])
    with open_dict(cfg):
        cfg.val_sets = _two_sets(cfg)
    metrics = train(cfg)
    for key in ("val/count/acc", "val/count/sampled/acc", "val/other/sampled/acc", "val/average/general/acc",
                "val/average/overall/sampled/acc", "before/val/other/sampled/acc"):  # fmt: skip
        assert key in metrics, key
    assert "val/acc" not in metrics and not any("dataloader_idx" in k for k in metrics)
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = set(next(csv.reader(f)))
    assert {"val/count/acc", "val/other/sampled/acc", "val/average/overall/sampled/acc"} <= logged
    table = (tmp_path / VAL_SETS_TABLE.format(step=cfg.trainer.max_steps)).read_text()
    assert "| count | general | 4 |" in table and "| other | vision_dependent | 8 |" in table
    assert "**overall average**" in table
    assert "val/count/acc" in (tmp_path / "val_before_after.txt").read_text()


def test_bad_val_sets_are_config_errors() -> None:
    from papo.config import ConfigError, validate_config

    cfg = compose_cfg(["val_sets=papo_eval", "val_sets.counting.answer_format=letter"])
    with pytest.raises(
        ConfigError, match=r"val_sets.counting.answer_format='letter' is unknown; valid: \['boxed'\]"
    ):
        validate_config(cfg)


@pytest.mark.slow
def test_eval_on_papos_suite_writes_the_per_benchmark_table(tmp_path: Path, cache_dir: Path) -> None:
    from papo.evaluation.evaluator import evaluate
    from test_eval_integration import eval_cfg

    out = tmp_path / "out"
    overrides = [
        "val_sets=papo_eval",
        f"papo_eval.source={FIXTURE}",
        f"papo_eval.cache_dir={tmp_path / 'zips'}",
        "papo_eval.protocol.samples=2",
        "papo_eval.protocol.max_new_tokens=4",
        "val_sets.counting.protocol={samples: 0, greedy: true}",
    ]
    result = evaluate(eval_cfg(overrides, out, cache_dir))
    report = out / "eval_val_sets"  # <stem>.json and <stem>.md (papo.evaluation.evaluator)
    saved = json.loads(report.with_suffix(".json").read_text())
    metrics = saved["metrics"]
    assert saved["val_sets"] == ["geometry3k", "mathvista", "we_math", "mmk12", "mathverse", "logicvista",
                                 "counting", "mmmu_pro", "mathverse_v"]  # fmt: skip
    assert saved["sets"]["mathvista"]["num_prompts"] == 2  # its free-form items dropped
    assert "geometry3k/avg@2/acc" in metrics and "counting/greedy/acc" in metrics
    assert "counting/avg@2/acc" not in metrics  # its own protocol
    for key in ("average/general/avg@2/acc", "average/vision_dependent/avg@2/acc", "average/overall/avg@2/acc",
                "average/vision_dependent/greedy/acc"):  # fmt: skip
        assert 0.0 <= metrics[key] <= 1.0, key
    md = report.with_suffix(".md").read_text()
    assert "| benchmark | group | n | avg@2 acc |" in md and "| counting | vision_dependent | 2 |" in md
    assert "| **overall average** |" in md and "## mathverse_v (vision_dependent)" in md
    assert result["metrics"] == metrics


def test_papos_suite_optimises_a_metric_it_logs() -> None:
    """With val_sets=papo_eval, train()'s optimized_metric is one of the keys the suite logs (val/acc is not)."""
    from papo.evaluation.val_sets import parse_val_sets

    cfg = compose_cfg(["val_sets=papo_eval"])
    sets = parse_val_sets(OmegaConf.to_container(cfg.val_sets, resolve=True))
    keys = _suite(sets).headline_keys()
    assert cfg.optimized_metric in keys
    assert "val/acc" not in keys
