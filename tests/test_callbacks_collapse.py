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
    """Healthy until ``start``, then docs/algorithm.md's signature: kl 0.05 -> ~1, clip and entropies up, acc down."""
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
    # the KL path alone (sustained path off)
    reports = run(CollapseDetector(sustained_steps=0), gradual_stream())
    first = next((r for r in reports if r.flagged), None)
    assert first is not None and 18 <= first.step <= 32, first
    assert first.active["kl_jump"] and first.active["entropy_rising"] and first.active["acc_falling"]
    # a baseline that keeps tracking kl_prcp while entropy/accuracy already look wrong absorbs the rise
    no_freeze = CollapseDetector(freeze_on_any=False, sustained_steps=0)
    assert not any(r.flagged for r in run(no_freeze, gradual_stream()))
    # with the defaults the sustained path (entropy doubled, accuracy falling) may only come earlier
    default_first = next(r for r in run(CollapseDetector(), gradual_stream()) if r.flagged)
    assert default_first.step <= first.step


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
    assert not any(r.flagged for r in run(CollapseDetector(sustained_steps=0), stream))
    assert any(r.flagged for r in run(CollapseDetector(require_kl=False, sustained_steps=0), stream))
    with pytest.raises(ValueError, match="kl_factor"):
        CollapseDetector(kl_factor=1.0)
    with pytest.raises(ValueError, match="min_signals"):
        CollapseDetector(min_signals=5)
    with pytest.raises(ValueError, match="sustained_entropy_factor"):
        CollapseDetector(sustained_entropy_factor=1.0)
    with pytest.raises(ValueError, match="sustained_steps"):
        CollapseDetector(sustained_steps=-1)


def test_sustained_path_flags_without_a_kl_jump() -> None:
    """Entropy tripled and accuracy falling for ``sustained_steps`` steps flag although kl_prcp stays put."""
    stream = collapsing_stream()
    for m in stream:
        m[KL] = 0.09
        m[ENT_R] *= 1.5  # on top of collapsing_stream's x2 ramp: ~3x at full collapse
        m[ENT_M] *= 1.5
    for m in stream[:40]:
        m[ENT_R] /= 1.5
        m[ENT_M] /= 1.5
    reports = run(CollapseDetector(), stream)
    first = next(r for r in reports if r.flagged)
    assert 40 <= first.step <= 46 and not first.active["kl_jump"], first
    assert "accuracy falling for 3 consecutive steps" in first.reason
    assert "below the 4.0x jump threshold" in first.reason and "entropy_real" in first.reason
    # kl_prcp never jumps: with the sustained path off nothing flags (kl_jump is required)
    assert not any(r.flagged for r in run(CollapseDetector(sustained_steps=0), stream))


# Metric streams replayed from real CSV logs (tests/data/collapse_detector/README.md): the embedded model
# with loss.gamma=2.0 (collapses: accuracy 0 from step 45 / 35) and healthy runs of logs/reproduce.
DATA = Path(__file__).parent / "data" / "collapse_detector"


def replay_csv(name: str, **kwargs) -> tuple[list, list[float]]:
    with (DATA / name).open() as f:
        rows = list(csv.DictReader(f))
    det = CollapseDetector(**kwargs)
    reports, acc = [], []
    for r in rows:
        metrics = {k: float(v) for k, v in r.items() if k != "step" and v != ""}
        reports.append(det.update(int(r["step"]), metrics))
        acc.append(metrics[ACC])
    return reports, acc


@pytest.mark.parametrize("name", ["gamma2_lean.csv", "gamma2_generate.csv"])
def test_replayed_gamma2_collapse_flags_well_before_accuracy_hits_zero(name: str) -> None:
    reports, acc = replay_csv(name)
    zero = next(i for i, a in enumerate(acc) if a == 0.0)  # first step with accuracy 0
    first = next((i for i, r in enumerate(reports) if r.flagged), None)
    assert first is not None, "the gamma=2 collapse was not flagged"
    assert first <= zero - 5, (first, zero)
    assert reports[first].triggered and "accuracy falling" in reports[first].reason
    # on again (a brief accuracy rebound may pause it) by the time accuracy is 0, and on to the end
    assert all(r.flagged for r in reports[zero:]), "the flag should stay on through the collapse"
    # the KL path alone never fires in time on this run (kl_prcp only doubles): the point of the new path
    kl_only = [i for i, r in enumerate(replay_csv(name, sustained_steps=0)[0]) if r.flagged]
    assert not kl_only or kl_only[0] > zero - 5


@pytest.mark.parametrize(
    "name",
    [
        "healthy_grpo_seed2.csv",
        "healthy_papo_g_gamma0.1_seed0.csv",
        "healthy_papo_d_seed0.csv",
        "healthy_default_400.csv",
    ],
)
def test_replayed_healthy_runs_never_flag(name: str) -> None:
    reports, _ = replay_csv(name)
    assert not any(r.flagged for r in reports), next(r.reason for r in reports if r.flagged)


def test_a_small_entropy_doubling_late_in_a_healthy_run_is_not_a_collapse() -> None:
    """The default 400-step run's entropy doubles from a tiny level (0.049 -> 0.0999) while accuracy dips near
    its end: a relative rise alone flagged it; the absolute floor (sustained_entropy_min_rise) does not."""
    reports, _ = replay_csv("healthy_default_400.csv", sustained_entropy_min_rise=0.0)
    assert any(r.flagged for r in reports)  # what the floor is for
    with pytest.raises(ValueError, match="sustained_entropy_min_rise"):
        CollapseDetector(sustained_entropy_min_rise=-0.1)


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
