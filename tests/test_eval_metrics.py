"""Evaluation pieces without a model: ValidationMetrics (incl. held-out KL), markdown, samples, sample table,
protocols, and the per-token KL_prcp statistics the training step logs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from papo.algos import kl_estimate
from papo.callbacks.sample_table import SampleTableCallback, wandb_sample_table
from papo.evaluation.evaluator import format_markdown, protocols_from_cfg
from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.samples import collect_samples, write_samples
from papo.evaluation.validation import PromptBudget, ValidationOutput
from papo.losses.base import LossInputs
from papo.losses.perception_kl import PerceptionKLLoss
from papo.rollout.experience import Experience


def make_exp(acc: list[float], tasks: list[str], vds: list[str], G: int = 1, texts: list[str] | None = None):
    n = len(acc)
    acc_t = torch.tensor(acc)
    mask = torch.zeros(n, 6)
    for i in range(n):
        mask[i, : 2 + i % 4] = 1
    return Experience(
        prompt_ids=torch.zeros(n, 3, dtype=torch.long),
        prompt_mask=torch.ones(n, 3),
        response_ids=torch.zeros(n, 6, dtype=torch.long),
        response_mask=mask,
        group_ids=torch.arange(n) // G,
        rewards=0.9 * acc_t + 0.1,
        accuracy=acc_t,
        format=torch.ones(n),
        visual=[None] * n,
        task_type=tasks,
        vision_dependency=vds,
        texts=texts or [f"resp{i}" for i in range(n)],
    )


def test_validation_metrics_keys_gaps_and_kl() -> None:
    m = ValidationMetrics(detailed=True)
    tasks, vds = ["count", "count", "text", "text"], ["high", "high", "none", "none"]
    m.update(make_exp([1, 1, 0, 1], tasks, vds), masked=False)
    m.update(make_exp([0, 1, 0, 1], tasks, vds), masked=True)
    m.update_kl(torch.tensor([1.0, 3.0, 0.0, 0.0]), torch.tensor([2.0, 2.0, 3.0, 1.0]), vds)
    out = m.compute("val")
    assert out["val/acc"] == pytest.approx(0.75) and out["val/acc_masked"] == pytest.approx(0.5)
    assert out["val/vision_gap"] == pytest.approx(0.25)
    assert out["val/vision_gap_by_task/count"] == pytest.approx(0.5)
    assert out["val/vision_gap_by_vd/none"] == pytest.approx(0.0)
    assert out["val/reward_gap"] == pytest.approx(0.9 * 0.25)
    assert out["val/format_masked_by_vd/high"] == pytest.approx(1.0)
    assert out["val/response_length"] == pytest.approx((2 + 3 + 4 + 5) / 4)
    assert out["val/kl_prcp"] == pytest.approx(4.0 / 8.0)  # token mean over all rows
    assert out["val/kl_prcp_by_vd/high"] == pytest.approx(1.0)
    assert out["val/kl_prcp_by_vd/none"] == pytest.approx(0.0)
    # training-time validation keeps its lean key set (the keys logged before are unchanged)
    lean = ValidationMetrics()
    lean.update(make_exp([1, 0], ["a", "b"], ["high", "none"]), masked=False)
    keys = set(lean.compute("val"))
    assert keys == {
        "val/acc",
        "val/reward",
        "val/format",
        "val/response_length",
        "val/acc_by_task/a",
        "val/acc_by_task/b",
        "val/acc_by_vd/high",
        "val/acc_by_vd/none",
    }


def test_declared_row_field_is_grouped_with_its_vision_gap() -> None:
    """A field the dataset declares (the shortcut testbed's consistent / breaking label) gets accuracy,
    masked accuracy and vision gap per value, also in the lean training-time key set."""
    labels = ["consistent", "breaking", "breaking", "consistent"]
    real = make_exp([1, 0, 1, 1], ["count"] * 4, ["low", "high", "high", "low"])
    masked = make_exp([1, 0, 0, 1], ["count"] * 4, ["low", "high", "high", "low"])
    real.shortcut, masked.shortcut = labels, labels
    m = ValidationMetrics()
    m.update(real, masked=False)
    m.update(masked, masked=True)
    out = m.compute("val")
    assert out["val/acc_by_shortcut/breaking"] == pytest.approx(0.5)
    assert out["val/acc_masked_by_shortcut/breaking"] == pytest.approx(0.0)
    assert out["val/vision_gap_by_shortcut/breaking"] == pytest.approx(0.5)
    assert out["val/vision_gap_by_shortcut/consistent"] == pytest.approx(0.0)
    assert "val/vision_gap_by_vd/high" not in out  # the standard groups keep their lean key set
    # rows without the field (every other dataset): no shortcut keys at all
    plain = ValidationMetrics()
    plain.update(make_exp([1, 0], ["a", "b"], ["high", "none"]), masked=False)
    assert not [k for k in plain.compute("val") if "shortcut" in k]
    # an explicit group list replaces the default one
    only_task = ValidationMetrics(groups=[("task_type", "task")])
    only_task.update(real, masked=False)
    assert sorted(k for k in only_task.compute("val") if "_by_" in k) == ["val/acc_by_task/count"]


def test_kl_prcp_accumulates_over_batches_token_weighted() -> None:
    m = ValidationMetrics()
    m.update_kl(torch.tensor([2.0]), torch.tensor([1.0]), ["high"])
    m.update_kl(torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0]), ["high", "high"])
    assert m.compute("val")["val/kl_prcp"] == pytest.approx(2.0 / 4.0)


def test_perception_kl_logs_per_token_mean_max_var() -> None:
    """The module logs every component metric as train/<component>/<key>: check the per-token stats."""
    torch.manual_seed(0)
    logps = -torch.rand(3, 5) * 3
    logps_masked = -torch.rand(3, 5) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    comp = PerceptionKLLoss(gamma=0.02)
    loss, metrics = comp(
        LossInputs(
            logps=logps,
            old_logps=logps,
            advantages=torch.zeros(3, 5),
            response_mask=mask,
            agg_mode="token-mean",
            logps_masked=logps_masked,
        )
    )
    tokens = kl_estimate(logps, logps_masked, "k3")[mask.bool()]
    assert comp.name == "perception_kl"  # -> train/perception_kl/kl_token_{mean,max,var}
    assert metrics["kl_token_mean"] == pytest.approx(float(tokens.mean()), rel=1e-5)
    assert metrics["kl_token_max"] == pytest.approx(float(tokens.max()), rel=1e-5)
    assert metrics["kl_token_var"] == pytest.approx(float(tokens.var()), rel=1e-4)
    assert metrics["kl"] == pytest.approx(float(tokens.mean()), rel=1e-5)
    assert float(loss) == pytest.approx(-0.02 * float(tokens.mean()), rel=1e-5)


def test_protocols_and_markdown() -> None:
    from papo.config import ConfigError, EvalConfig, parse_group

    ev = {
        "split": "val",
        "samples": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "greedy": True,
        "masked": True,
        "kl_prcp": True,
        "limit": None,
        "max_new_tokens": None,
        "num_samples_shown": 8,
        "device": "auto",
        "output_dir": None,
        "write_to_run_dir": True,
    }
    protos = protocols_from_cfg(parse_group(EvalConfig, ev, "eval"), 16)
    assert [p.name for p in protos] == ["greedy", "avg@8"]
    assert protos[0].gen.temperature == 0 and protos[1].gen.num_samples == 8
    with pytest.raises(ConfigError, match=r"eval\.temperature=0\.0 must be a number > 0"):
        parse_group(EvalConfig, {**ev, "greedy": False, "temperature": 0.0}, "eval")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        parse_group(EvalConfig, {**ev, "greedy": False, "samples": 0}, "eval")
    m = ValidationMetrics(detailed=True)
    tasks, vds = ["count", "text"], ["high", "none"]
    m.update(make_exp([1, 0], tasks, vds), masked=False)
    m.update(make_exp([0, 0], tasks, vds), masked=True)
    result = {
        "metrics": m.compute("greedy"),
        "counts": {"task": {"count": 1, "text": 1}, "vd": {"high": 1, "none": 1}},
        "num_prompts": 2,
    }
    md = format_markdown(result, ["greedy"], "Eval")
    assert "| acc | 50.00 |" in md and "| vision_gap | 50.00 |" in md
    assert "## Per task type" in md and "| count | 1 | 100.00 | 0.00 | 100.00 |" in md


def _batch(n: int) -> dict:
    img = [Image.new("RGB", (28, 28), (255, 0, 0)) for _ in range(n)]
    dark = [Image.new("RGB", (28, 28), (0, 0, 0)) for _ in range(n)]
    return {
        "uid": [f"u{i}" for i in range(n)],
        "problem": [f"How many | things {i}?" for i in range(n)],
        "prompt": [f"p{i}" for i in range(n)],
        "images": [[x] for x in img],
        "images_masked": [[x] for x in dark],
        "answer": [str(i) for i in range(n)],
        "task_type": ["count"] * n,
        "vision_dependency": ["high"] * n,
    }


def test_samples_collect_write_and_tables(tmp_path: Path) -> None:
    batch = _batch(3)
    real = make_exp(
        [1, 0, 1, 1, 0, 0], ["count"] * 6, ["high"] * 6, G=2, texts=[f"real{i}" for i in range(6)]
    )
    masked = make_exp([0] * 6, ["count"] * 6, ["high"] * 6, G=2, texts=[f"masked{i}" for i in range(6)])
    samples: list = []
    collect_samples(batch, real, False, samples, max_samples=2, step=7)
    collect_samples(batch, masked, True, samples, max_samples=2, step=7)
    assert [s["uid"] for s in samples] == ["u0", "u1"]
    assert samples[1]["response"] == "real2" and samples[1]["accuracy"] == 1.0  # first row of prompt 1
    assert samples[1]["response_masked"] == "masked2" and samples[1]["accuracy_masked"] == 0.0
    md, path_csv = write_samples(samples, tmp_path, "step000007")
    text = md.read_text()
    assert "![](images/step000007-0.png)" in text and "![](images/step000007-0-masked.png)" in text
    assert "How many \\| things 0?" in text  # pipes escaped
    assert text.startswith("# Validation samples, step 7")
    md_eval, _ = write_samples(samples, tmp_path / "eval", "samples", title="Samples: eval on val")
    assert md_eval.read_text().startswith("# Samples: eval on val")
    assert (tmp_path / "images" / "step000007-1-masked.png").exists()
    assert "real0" in path_csv.read_text()

    table = wandb_sample_table(samples)  # wandb.Image columns, no run needed
    assert table.columns[:2] == ["image", "image_masked"] and len(table.data) == 2

    cb = SampleTableCallback(num_samples=2, dirpath=str(tmp_path / "vs"))
    trainer = SimpleNamespace(
        loggers=[], is_global_zero=True, sanity_checking=False, global_step=12, default_root_dir=str(tmp_path)
    )
    cb.on_validation_epoch_start(trainer, None)
    for batch_idx in range(2):  # samples from what validation_step returns for the first batch only
        exp = make_exp([1, 0, 1], ["count"] * 3, ["high"] * 3, texts=[f"r{batch_idx}{i}" for i in range(3)])
        masked = make_exp(
            [0, 0, 1], ["count"] * 3, ["high"] * 3, texts=[f"m{batch_idx}{i}" for i in range(3)]
        )
        cb.on_validation_batch_end(trainer, None, ValidationOutput(exp, masked), _batch(3), batch_idx)
    assert [(s["response"], s["response_masked"]) for s in cb.samples] == [("r00", "m00"), ("r01", "m01")]
    cb.on_validation_end(trainer, None)
    assert (tmp_path / "vs" / "step000012.md").exists() and (tmp_path / "vs" / "step000012.csv").exists()


def test_kl_prompt_budget_restarts_at_every_validation_run() -> None:
    """PromptBudget: the held-out KL rows are those of the first val_kl_max_prompts prompts, every run alike."""
    budget = PromptBudget(5)
    for _run in range(2):
        taken = []
        for batch_idx in range(3):
            rows = budget.take(batch_idx, 3, make_exp([1, 0, 1], ["count"] * 3, ["high"] * 3))
            taken.append(None if rows is None else rows.group_ids.tolist())
        assert taken == [[0, 1, 2], [0, 1], None]
    unlimited = PromptBudget(None)
    assert [len(unlimited.take(i, 3, make_exp([1, 0, 1], ["c"] * 3, ["high"] * 3))) for i in range(3)] == [
        3
    ] * 3
