"""Early warning for "KL_prcp hacking", PAPO's failure mode with a too-large gamma (docs/algorithm.md).

The policy learns to raise the perception KL by emitting junk tokens. Early signs, in the order the
paper describes them: (1) kl_prcp shoots up (e.g. 0.05 -> 1.0), (2) the high-side clip fraction climbs,
(3) the entropy of both branches rises, (4) the accuracy reward falls. The released code has no
detector; this one watches the four signals in the training metrics:

* ``kl_jump``: smoothed kl_prcp > ``kl_factor`` x its running level (and > ``kl_min``);
* ``clip_rising``: smoothed ``clipfrac_high`` > its running level + ``clip_rise`` (absolute);
* ``entropy_rising``: every watched entropy (real and masked branch; ``train/response/entropy`` when the
  double-entropy term is off) > (1 + ``entropy_rise``) x its running level;
* ``acc_falling``: smoothed accuracy < its running level - ``acc_drop`` (absolute).

"Smoothed" is a fast EMA (weight ``fast_alpha`` on the new value); the "running level" is a slow EMA
(``slow_alpha``) that is frozen while its signal is active (with ``freeze_on_any``, while ANY signal is
active), so a sustained or gradual rise is not absorbed into the baseline: KL_prcp hacking can build up over
several steps, with entropy and accuracy moving first, which a baseline that keeps tracking the metric never
sees as a jump. Nothing is checked during the first
``warmup_steps`` updates. A collapse is declared on either of two paths:

* the KL path: at least ``min_signals`` signals hold (``kl_jump`` among them when ``require_kl``) for
  ``patience`` consecutive updates;
* the sustained path (``sustained_steps`` > 0): every watched entropy above ``sustained_entropy_factor`` x
  its running level and above it by more than ``sustained_entropy_min_rise`` (absolute), AND ``acc_falling``,
  together, for ``sustained_steps`` consecutive updates, whatever kl_prcp does. Why a second path: on a small
  model the hacking can drive accuracy and format to 0 while the smoothed kl_prcp stays within a few times
  its running level (it starts high and falls again once the responses are junk), and healthy PAPO runs'
  kl_prcp drifts up as much over training, so no KL threshold separates the two; a doubled entropy while
  accuracy falls does. The absolute floor keeps a tiny entropy doubling late in a healthy run from counting.
  The reason then also reports kl_prcp's ratio. The runs that set these thresholds, and the healthy runs
  replayed against them: docs/evaluation.md, "Collapse detector".

Missing or non-finite metrics are skipped.

:class:`CollapseDetector` is pure Python (feed it metric dicts; unit-tested on synthetic streams);
:class:`CollapseDetectorCallback` feeds it the logged training metrics after each optimiser step, logs
``train/collapse/score`` (active signals, 0-4) and ``train/collapse/flag``, warns with the reason and the
step (the logs' x-axis: Lightning's logger step of that batch), writes ``collapse.txt`` /
``collapse.json`` into the output dir and optionally saves a checkpoint and stops.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

SIGNALS = ("kl_jump", "clip_rising", "entropy_rising", "acc_falling")


@dataclass
class CollapseReport:
    """The detector's verdict after one update."""

    step: int
    score: int  # number of active signals (0-4)
    flagged: bool  # collapse condition held for ``patience`` consecutive updates
    triggered: bool  # True only on the update where ``flagged`` turned on
    active: dict[str, bool] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # signal -> human-readable evidence
    reason: str = ""


class _Ema:
    """A fast EMA (the current level) and a slow one (the running level) of one metric."""

    def __init__(self) -> None:
        self.fast: float | None = None
        self.slow: float | None = None
        self.n = 0

    def observe(self, x: float, fast_alpha: float) -> None:
        self.fast = x if self.fast is None else (1 - fast_alpha) * self.fast + fast_alpha * x
        self.n += 1

    def settle(self, x: float, slow_alpha: float, frozen: bool) -> None:
        if self.slow is None:
            self.slow = x
        elif not frozen:
            self.slow = (1 - slow_alpha) * self.slow + slow_alpha * x


class CollapseDetector:
    """Pure detection logic over a stream of metric dicts (see the module docstring)."""

    def __init__(
        self,
        kl_key: str = "train/perception_kl/kl",
        clip_key: str = "train/pg/clipfrac_high",
        entropy_keys: Sequence[str] = (
            "train/double_entropy/entropy_real",
            "train/double_entropy/entropy_masked",
        ),
        entropy_fallback_key: str | None = "train/response/entropy",
        acc_key: str = "train/reward/accuracy",
        kl_factor: float = 4.0,
        kl_min: float = 0.05,
        clip_rise: float = 0.05,
        entropy_rise: float = 0.2,
        acc_drop: float = 0.1,
        fast_alpha: float = 0.5,
        slow_alpha: float = 0.1,
        warmup_steps: int = 10,
        min_signals: int = 2,
        require_kl: bool = True,
        patience: int = 2,
        freeze_on_any: bool = True,
        sustained_entropy_factor: float = 2.0,
        sustained_steps: int = 3,
        sustained_entropy_min_rise: float = 0.1,
    ) -> None:
        if kl_factor <= 1:
            raise ValueError(f"collapse_detector.kl_factor must be > 1, got {kl_factor}")
        if not 1 <= min_signals <= len(SIGNALS):
            raise ValueError(
                f"collapse_detector.min_signals must be in [1, {len(SIGNALS)}], got {min_signals}"
            )
        if sustained_entropy_factor <= 1:
            raise ValueError(
                f"collapse_detector.sustained_entropy_factor must be > 1, got {sustained_entropy_factor}"
            )
        if sustained_entropy_min_rise < 0:
            raise ValueError(
                f"collapse_detector.sustained_entropy_min_rise must be >= 0, got {sustained_entropy_min_rise}"
            )
        if int(sustained_steps) < 0:
            raise ValueError(
                f"collapse_detector.sustained_steps must be >= 0 (0 = off), got {sustained_steps}"
            )
        if not (0 < fast_alpha <= 1 and 0 < slow_alpha <= 1):
            raise ValueError(f"EMA weights must be in (0, 1], got fast={fast_alpha}, slow={slow_alpha}")
        self.kl_key, self.clip_key, self.acc_key = kl_key, clip_key, acc_key
        self.entropy_keys = tuple(entropy_keys)
        self.entropy_fallback_key = entropy_fallback_key
        self.kl_factor, self.kl_min = kl_factor, kl_min
        self.clip_rise, self.entropy_rise, self.acc_drop = clip_rise, entropy_rise, acc_drop
        self.fast_alpha, self.slow_alpha = fast_alpha, slow_alpha
        self.warmup_steps, self.min_signals = int(warmup_steps), int(min_signals)
        self.require_kl, self.patience = bool(require_kl), max(1, int(patience))
        self.freeze_on_any = bool(freeze_on_any)
        self.sustained_entropy_factor = float(sustained_entropy_factor)
        self.sustained_steps = int(sustained_steps)
        self.sustained_entropy_min_rise = float(sustained_entropy_min_rise)
        self.reset()

    def reset(self) -> None:
        self.emas: dict[str, _Ema] = {}
        self.updates = 0
        self.streak = 0
        self.sustained_streak = 0
        self.flagged = False
        self.events: list[CollapseReport] = []

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _value(metrics: Mapping[str, Any], key: str | None) -> float | None:
        if key is None or key not in metrics:
            return None
        v = metrics[key]
        v = float(v.item() if hasattr(v, "item") else v)
        return v if math.isfinite(v) else None

    def _entropy_keys(self, metrics: Mapping[str, Any]) -> list[str]:
        keys = [k for k in self.entropy_keys if self._value(metrics, k) is not None]
        if not keys and self._value(metrics, self.entropy_fallback_key) is not None:
            keys = [self.entropy_fallback_key]  # type: ignore[list-item]
        return keys

    # ------------------------------------------------------------------ the check
    def update(self, step: int, metrics: Mapping[str, Any]) -> CollapseReport:
        """Feed one optimiser step's metrics; returns the verdict."""
        values = {
            k: v
            for k in (self.kl_key, self.clip_key, self.acc_key, *self._entropy_keys(metrics))
            if (v := self._value(metrics, k)) is not None
        }
        for k, v in values.items():
            self.emas.setdefault(k, _Ema()).observe(v, self.fast_alpha)
        self.updates += 1
        checking = self.updates > self.warmup_steps
        active: dict[str, bool] = dict.fromkeys(SIGNALS, False)
        details: dict[str, str] = {}
        anomalous: set[str] = set()
        entropy_surge = False  # every watched entropy > sustained_entropy_factor x its running level

        def level(k: str) -> tuple[float, float] | None:
            e = self.emas.get(k)
            if k not in values or e is None or e.slow is None or e.fast is None:
                return None
            return e.fast, e.slow

        if checking:
            lv = level(self.kl_key)
            if lv is not None:
                cur, base = lv
                if cur > self.kl_factor * max(base, 1e-12) and cur > self.kl_min:
                    active["kl_jump"] = True
                    anomalous.add(self.kl_key)
                    details["kl_jump"] = (
                        f"kl_prcp {cur:.4g} is {cur / max(base, 1e-12):.1f}x its running level {base:.4g} "
                        f"(threshold {self.kl_factor}x)"
                    )
                else:  # context for the sustained path's reason (not a signal)
                    details["kl_prcp"] = (
                        f"kl_prcp {cur:.4g} is {cur / max(base, 1e-12):.1f}x its running level {base:.4g} "
                        f"(below the {self.kl_factor}x jump threshold)"
                    )
            lv = level(self.clip_key)
            if lv is not None:
                cur, base = lv
                if cur > base + self.clip_rise:
                    active["clip_rising"] = True
                    anomalous.add(self.clip_key)
                    details["clip_rising"] = (
                        f"high-side clip fraction {cur:.3g} vs running level {base:.3g} (+{cur - base:.3g})"
                    )
            ent_keys = self._entropy_keys(metrics)
            ent_levels = [(k, level(k)) for k in ent_keys]
            entropy_surge = bool(ent_levels) and all(
                lv is not None
                and lv[0] > self.sustained_entropy_factor * lv[1]
                and lv[0] - lv[1] > self.sustained_entropy_min_rise
                for _, lv in ent_levels
            )
            if ent_levels and all(
                lv is not None and lv[0] > (1 + self.entropy_rise) * lv[1] for _, lv in ent_levels
            ):
                active["entropy_rising"] = True
                anomalous.update(ent_keys)
                details["entropy_rising"] = "; ".join(
                    f"{k.rsplit('/', 1)[-1]} {lv[0]:.3g} vs {lv[1]:.3g} ({lv[0] / max(lv[1], 1e-12) - 1:+.0%})"
                    for k, lv in ent_levels
                    if lv is not None
                )
            lv = level(self.acc_key)
            if lv is not None:
                cur, base = lv
                if cur < base - self.acc_drop:
                    active["acc_falling"] = True
                    anomalous.add(self.acc_key)
                    details["acc_falling"] = (
                        f"accuracy {cur:.3g} vs running level {base:.3g} ({cur - base:+.3g})"
                    )

        suspicious = any(active.values())
        for k, v in values.items():  # a suspicious step never moves any running level
            self.emas[k].settle(
                v, self.slow_alpha, frozen=k in anomalous or (self.freeze_on_any and suspicious)
            )

        score = sum(active.values())
        condition = score >= self.min_signals and (active["kl_jump"] or not self.require_kl)
        self.streak = self.streak + 1 if condition else 0
        sustained = self.sustained_steps > 0 and entropy_surge and active["acc_falling"]
        self.sustained_streak = self.sustained_streak + 1 if sustained else 0
        kl_path = self.streak >= self.patience
        sustained_path = self.sustained_steps > 0 and self.sustained_streak >= self.sustained_steps
        was = self.flagged
        self.flagged = kl_path or sustained_path
        report = CollapseReport(
            step=int(step),
            score=int(score),
            flagged=self.flagged,
            triggered=self.flagged and not was,
            active=active,
            details=details,
        )
        if kl_path:
            report.reason = (
                f"step {step}: KL_prcp hacking suspected ({score}/{len(SIGNALS)} signals for "
                f"{self.streak} consecutive steps): " + "; ".join(details[s] for s in SIGNALS if s in details)
            )
        elif sustained_path:
            report.reason = (
                f"step {step}: KL_prcp hacking suspected (entropy > {self.sustained_entropy_factor:g}x its "
                f"running level and accuracy falling for {self.sustained_streak} consecutive steps; "
                f"{score}/{len(SIGNALS)} signals): "
                + "; ".join(details[s] for s in (*SIGNALS, "kl_prcp") if s in details)
            )
        if report.triggered:
            self.events.append(report)
        return report

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "emas": {k: {"fast": e.fast, "slow": e.slow, "n": e.n} for k, e in self.emas.items()},
            "updates": self.updates,
            "streak": self.streak,
            "sustained_streak": self.sustained_streak,
            "flagged": self.flagged,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        for k, e in state.get("emas", {}).items():
            ema = self.emas.setdefault(k, _Ema())
            ema.fast, ema.slow, ema.n = e["fast"], e["slow"], int(e["n"])
        self.updates = int(state.get("updates", 0))
        self.streak = int(state.get("streak", 0))
        self.sustained_streak = int(state.get("sustained_streak", 0))
        self.flagged = bool(state.get("flagged", False))


class CollapseDetectorCallback(Callback):
    """Runs :class:`CollapseDetector` on the training metrics after every optimiser step.

    Args:
        dirpath: where ``collapse.txt`` / ``collapse.json`` (and the stop checkpoint) go; None = the
            trainer's ``default_root_dir``.
        stop_on_collapse: save ``checkpoints/collapse-step<N>.ckpt`` and stop training when triggered.
        log_metrics: log ``train/collapse/score`` and ``train/collapse/flag`` every step.
        **detector_kwargs: thresholds of :class:`CollapseDetector`.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        stop_on_collapse: bool = False,
        log_metrics: bool = True,
        **detector_kwargs: Any,
    ) -> None:
        super().__init__()
        self.detector = CollapseDetector(**detector_kwargs)
        self.dirpath = dirpath
        self.stop_on_collapse = bool(stop_on_collapse)
        self.log_metrics = bool(log_metrics)
        self._last_step = -1
        self.last_report: CollapseReport | None = None

    @property
    def state_key(self) -> str:
        return "CollapseDetectorCallback"

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:  # no optimiser step this batch (e.g. DAPO still filling its buffer)
            return
        self._last_step = step
        # report the x-axis of the logs (CSV / W&B "step" of this batch's metrics), not the optimiser count
        log_step = int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", step))
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and torch.is_tensor(v) and v.numel() == 1
        }
        report = self.detector.update(log_step, metrics)
        self.last_report = report
        if self.log_metrics:
            pl_module.log_dict(
                {"train/collapse/score": float(report.score), "train/collapse/flag": float(report.flagged)},
                on_step=True,
                on_epoch=False,
            )
        if not report.triggered:
            return
        log.warning("collapse detector: %s", report.reason)
        if trainer.is_global_zero:
            out = self._dir(trainer)
            out.mkdir(parents=True, exist_ok=True)
            with (out / "collapse.txt").open("a") as f:
                f.write(report.reason + "\n")
            (out / "collapse.json").write_text(
                json.dumps([asdict(e) for e in self.detector.events], indent=2) + "\n"
            )
        if self.stop_on_collapse:
            path = self._dir(trainer) / "checkpoints" / f"collapse-step{log_step:06d}.ckpt"
            trainer.save_checkpoint(str(path))
            log.warning("collapse detector: saved %s and stopping training", path)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.detector.load_state_dict(state_dict.get("detector", {}))
        self._last_step = int(state_dict.get("last_step", -1))
