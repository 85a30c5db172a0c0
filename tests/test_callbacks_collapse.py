"""The KL_prcp-hacking detector: pure logic on synthetic metric streams, then the Lightning callback."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from papo.callbacks.collapse_detector import CollapseDetector, CollapseDetectorCallback

KL, CLIP, ACC = "train/perception_kl/kl", "train/pg/clipfrac_high", "train/reward/accuracy"
ENT_R, ENT_M = "train/double_entropy/entropy_real", "train/double_entropy/entropy_masked"


def healthy_step(rng: np.random.Generator, t: int) -> dict[str, float]:
    """A run that learns: kl_prcp creeping up slowly with noise, accuracy rising, entropies falling."""
    return {
        KL: 0.03 * (1 + t / 100) * float(rng.uniform(0.6, 1.4)),
        CLIP: float(rng.uniform(0.0, 0.02)),
        ENT_R: 1.0 * (1 - t / 400) * float(rng.uniform(0.95, 1.05)),
        ENT_M: 1.2 * (1 - t / 400) * float(rng.uniform(0.95, 1.05)),
        ACC: min(0.9, 0.4 + t / 400) + float(rng.uniform(-0.05, 0.05)),
    }


def collapsing_stream(n: int = 80, start: int = 40, seed: int = 0) -> list[dict[str, float]]:
    """Healthy until ``start``, then papo.md's signature: kl 0.05 -> ~1, clip and entropies up, acc down."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        m = healthy_step(rng, t)
        if t >= start:
            k = min(1.0, (t - start + 1) / 5)  # ramps in over 5 steps
            m[KL] = m[KL] + k * 1.0
            m[CLIP] = m[CLIP] + k * 0.15
            m[ENT_R] *= 1 + k
            m[ENT_M] *= 1 + k
            m[ACC] = m[ACC] - k * 0.35
        out.append(m)
    return out


def run(detector: CollapseDetector, stream: list[dict[str, float]]):
    return [detector.update(t, m) for t, m in enumerate(stream)]


def test_healthy_stream_never_flags() -> None:
    rng = np.random.default_rng(1)
    reports = run(CollapseDetector(), [healthy_step(rng, t) for t in range(300)])
    assert not any(r.flagged for r in reports)
    assert max(r.score for r in reports) <= 1


def test_collapsing_stream_flags_soon_after_the_jump_with_reason() -> None:
    det = CollapseDetector()
    reports = run(det, collapsing_stream())
    flagged = [r for r in reports if r.flagged]
    assert flagged, "the collapse was not detected"
    first = flagged[0]
    assert 40 <= first.step <= 44, first.step
    assert first.triggered and sum(r.triggered for r in reports) == 1
    assert first.active["kl_jump"] and first.score >= 3
    assert (
        f"step {first.step}" in first.reason and "kl_prcp" in first.reason and "running level" in first.reason
    )
    assert det.events == [first]
    # the running level is frozen while anomalous: the collapse stays flagged instead of being absorbed
    assert all(r.flagged for r in reports[first.step :])


def gradual_stream(n: int = 60, start: int = 15, seed: int = 4) -> list[dict[str, float]]:
    """The embedded model's hacking (logs/ of a gamma=2 run): entropy and accuracy move first, kl_prcp rises
    gradually 0.04 -> ~0.25 over 15 steps (no single jump), no PPO clipping (one on-policy update)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        k = min(1.0, max(0.0, (t - start) / 15))
        out.append(
            {
                KL: (0.04 + 0.21 * k) * float(rng.uniform(0.6, 1.4)),
                CLIP: 0.0,
                "train/response/entropy": (0.12 + 0.4 * k) * float(rng.uniform(0.8, 1.2)),
                ACC: max(0.0, 0.4 - 0.4 * k + float(rng.uniform(-0.05, 0.05))),
            }
        )
    return out


def test_gradual_hacking_is_caught_only_with_frozen_baselines() -> None:
    reports = run(CollapseDetector(), gradual_stream())
    first = next((r for r in reports if r.flagged), None)
    assert first is not None and 18 <= first.step <= 32, first
    assert first.active["kl_jump"] and first.active["entropy_rising"] and first.active["acc_falling"]
    # a baseline that keeps tracking kl_prcp while entropy/accuracy already look wrong absorbs the rise
    assert not any(r.flagged for r in run(CollapseDetector(freeze_on_any=False), gradual_stream()))


def test_single_step_spike_and_kl_alone_do_not_flag() -> None:
    rng = np.random.default_rng(2)
    stream = [healthy_step(rng, t) for t in range(60)]
    stream[30] = {**stream[30], KL: 2.0, ACC: 0.0}  # one bad step: patience=2 ignores it
    for t in range(45, 60):  # kl alone jumps (everything else healthy): one signal < min_signals
        stream[t][KL] = 1.0
    reports = run(CollapseDetector(), stream)
    assert not any(r.flagged for r in reports)
    assert any(r.active["kl_jump"] for r in reports[45:])


def test_entropy_fallback_nan_and_missing_metrics() -> None:
    """Without the double-entropy keys the response entropy is watched; NaN / missing values are skipped."""
    stream = []
    for m in collapsing_stream(seed=3):
        ent = m.pop(ENT_R)
        m.pop(ENT_M)
        m["train/response/entropy"] = ent
        stream.append(m)
    stream[5][KL] = math.nan
    stream[6].pop(CLIP)
    reports = run(CollapseDetector(min_signals=4), stream)
    first = next(r for r in reports if r.flagged)
    assert first.active["entropy_rising"] and "entropy" in first.details["entropy_rising"]


def test_require_kl_and_validation_errors() -> None:
    stream = collapsing_stream()
    for m in stream:
        m.pop(KL)
    assert not any(r.flagged for r in run(CollapseDetector(), stream))
    assert any(r.flagged for r in run(CollapseDetector(require_kl=False), stream))
    with pytest.raises(ValueError, match="kl_factor"):
        CollapseDetector(kl_factor=1.0)
    with pytest.raises(ValueError, match="min_signals"):
        CollapseDetector(min_signals=5)


def test_state_dict_round_trip_continues_identically() -> None:
    stream = collapsing_stream()
    a = CollapseDetector()
    run(a, stream[:30])
    b = CollapseDetector()
    b.load_state_dict(a.state_dict())
    ra, rb = run(a, stream[30:]), run(b, stream[30:])
    assert [r.flagged for r in ra] == [r.flagged for r in rb]
    assert [r.score for r in ra] == [r.score for r in rb]


class _StreamModule(L.LightningModule):
    """Logs a predefined metric stream, one dict per optimiser step."""

    def __init__(self, stream: list[dict[str, float]]) -> None:
        super().__init__()
        self.stream = stream
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        self.log_dict(self.stream[min(self.global_step, len(self.stream) - 1)], on_step=True)
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(200, 1), batch_size=1)


def test_callback_logs_warns_writes_and_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cb = CollapseDetectorCallback(dirpath=str(tmp_path), stop_on_collapse=True)
    trainer = L.Trainer(
        max_steps=80,
        logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="csv", version=""),
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path),
    )
    with caplog.at_level("WARNING"):
        trainer.fit(_StreamModule(collapsing_stream()))
    step = cb.detector.events[0].step
    assert 40 <= step < 80 and trainer.global_step == step + 1, (
        "training should stop at the collapse"
    )  # log step
    assert "KL_prcp hacking suspected" in caplog.text
    assert f"step {step}" in (tmp_path / "collapse.txt").read_text()
    assert (tmp_path / "collapse.json").exists()
    assert (tmp_path / "checkpoints" / f"collapse-step{step:06d}.ckpt").exists()
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    flags = [float(r["train/collapse/flag"]) for r in rows if r.get("train/collapse/flag")]
    scores = [float(r["train/collapse/score"]) for r in rows if r.get("train/collapse/score")]
    assert flags[-1] == 1.0 and sum(flags) >= 1 and max(scores) >= 3
