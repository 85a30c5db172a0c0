"""One RL step of every method preset (papo, vppo, noisyrollout) with each algorithm (grpo, dapo) on the tiny
model, on CPU: the method's own metrics are logged, and its block changes the update (the parameters after the
step differ from the same step, same seed, with that block switched off). PAPO through the blocks
(method=papo) takes exactly the step of the written-out loss=papo."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import spy_module
from papo.pipeline import train

FAST = [
    "logger=csv",
    "validate_before=false",
    "validate_after=false",
    "trainer.max_steps=1",
    "reward.name=coin",
]

#: method -> (metric keys its blocks log, overrides that switch its block off)
METHODS = {
    "papo": (
        {
            "train/perception_signal/signal",
            "train/perception_signal/gamma",
            "train/perception_signal/kept_frac",
        },
        ["loss.gamma=0.0", "loss.eta_real=0.0", "loss.eta_masked=0.0"],
    ),
    "vppo": (
        {
            "train/sensitivity/token_mean",
            "train/advantage_shaping/scale_max",
            "train/token_selection/kept_frac",
            "train/entropy/entropy",
        },
        ["sensitivity=none", "token_selection=none", "advantage_shaping=none"],
    ),
    "noisyrollout": (
        {"train/rollout_view/noise_step", "train/rollout_view/accuracy_noisy", "train/entropy/entropy"},
        ["rollout_view=none"],
    ),
}


#: reward.name=coin: the fair-coin test reward of conftest.py
pytestmark = pytest.mark.usefixtures("coin_reward")


def _run(make_cfg, out: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> tuple[dict, dict]:
    """Train one step; returns (the logged metrics of the update, the policy's parameters after it)."""
    captured = spy_module(monkeypatch)
    cfg = make_cfg([*FAST, *overrides])
    with open_dict(cfg):  # each run in a folder of its own
        cfg.paths.output_dir = cfg.paths.log_dir = str(out)
    train(cfg)
    monkeypatch.undo()
    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss/total") not in ("", None)]
    assert len(rows) == 1, "one update"
    metrics = {k: float(v) for k, v in rows[0].items() if v not in ("", None)}
    params = {n: p.detach().clone() for n, p in captured["module"].policy.named_parameters()}
    return metrics, params


@pytest.mark.parametrize("algo", ["grpo", "dapo"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_logs_the_method_metrics_and_its_block_changes_the_update(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, algo: str
) -> None:
    keys, block_off = METHODS[method]
    base = [f"method={method}", f"algo={algo}", "seed=7"]
    metrics, params = _run(make_cfg, tmp_path / "on", monkeypatch, base)
    missing = keys - set(metrics)
    assert not missing, f"{method} with {algo}: not logged {sorted(missing)}"
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in keys)
    off_metrics, off_params = _run(make_cfg, tmp_path / "off", monkeypatch, [*base, *block_off])
    assert not keys & {k for k in off_metrics if not k.startswith("train/entropy/")}, "the block is off"
    changed = [n for n in params if not torch.equal(params[n], off_params[n])]
    assert changed, f"{method} with {algo}: the block left every parameter as without it"


@pytest.mark.parametrize("algo", ["grpo", "dapo"])
def test_papo_through_the_blocks_takes_the_written_out_step(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algo: str
) -> None:
    base = [f"algo={algo}", "seed=3"]
    blocks, blocks_params = _run(make_cfg, tmp_path / "blocks", monkeypatch, [*base, "method=papo"])
    written, written_params = _run(make_cfg, tmp_path / "written", monkeypatch, [*base, "loss=papo"])
    for key in ("train/loss/total", "train/pg/loss", "train/grad_norm"):
        assert blocks[key] == written[key], key
    assert blocks["train/perception_signal/signal"] == written["train/perception_kl/kl"]
    if algo == "dapo":  # PAPO-D's double entropy
        assert blocks["train/double_entropy/entropy_real"] == written["train/double_entropy/entropy_real"]
    for name, value in written_params.items():
        assert torch.equal(blocks_params[name], value), name


def test_a_full_distribution_signal_drives_vppo_s_shaping(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """sensitivity=jsd (hidden states of both views through the LM head) in place of VPPO's k3: logged, finite,
    and a different update than k3's."""
    base = ["method=vppo", "algo=grpo", "seed=5"]
    jsd, jsd_params = _run(make_cfg, tmp_path / "jsd", monkeypatch, [*base, "sensitivity=jsd"])
    _, k3_params = _run(make_cfg, tmp_path / "k3", monkeypatch, base)
    assert 0 < jsd["train/sensitivity/token_max"] <= 0.6932  # the views differ; a JSD is bounded by log 2
    assert jsd["train/token_selection/kept_frac"] > 0
    assert any(not torch.equal(jsd_params[n], k3_params[n]) for n in jsd_params)


def _capture_prepared(monkeypatch: pytest.MonkeyPatch) -> list:
    """For every rollout batch, after ExperienceSource.prepare and before the update: the experience and the rollout
    parameters' log-probs of its responses given the real image and (when kept) the masked view."""
    from papo.rollout.experience_source import ExperienceSource

    seen: list = []
    original = ExperienceSource.prepare

    def spy(self, exp, policy, reference):
        out = original(self, exp, policy, reference)
        with torch.no_grad():
            real = self.logps_nograd(policy, exp)
            masked = self.logps_nograd(policy, exp, masked=True) if exp.visual_masked else None
        seen.append((exp, real, masked))
        return out

    monkeypatch.setattr(ExperienceSource, "prepare", spy)
    return seen


def test_noisy_rollouts_are_trained_on_the_clean_image(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """Every row of a group carries the same (clean) image inputs, and the old log-probs the update starts from
    are those of the clean image: the noisy responses' ratio is pi(o | I) / pi_old(o | I)."""
    seen = _capture_prepared(monkeypatch)
    cfg = make_cfg([*FAST, "method=noisyrollout", "algo=grpo", "algo.num_minibatches=2", "seed=2"])
    train(cfg)
    exp, clean, _ = seen[0]
    G = cfg.algo.group_size
    assert len(exp) % G == 0
    for start in range(0, len(exp), G):
        rows = range(start, start + G)
        assert len({int(exp.group_ids[i]) for i in rows}) == 1
        first = exp.visual[start]["pixel_values"]
        assert all(torch.equal(exp.visual[i]["pixel_values"], first) for i in rows)
    torch.testing.assert_close(exp.old_logps, clean)


def test_vppo_signal_is_k3_of_the_rollout_policy_real_vs_masked(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """The signal the shapers see is k3 with the masked view as the reference, from the rollout parameters."""
    from papo.algos.visual_sensitivity import sampled_token_sensitivity

    seen = _capture_prepared(monkeypatch)
    train(make_cfg([*FAST, "method=vppo", "algo=grpo", "seed=4"]))
    exp, real, masked = seen[0]
    expected = sampled_token_sensitivity(real, masked, exp.response_mask, "k3")
    torch.testing.assert_close(exp.sensitivity, expected)
    assert not torch.allclose(expected, sampled_token_sensitivity(masked, real, exp.response_mask, "k3"))


def test_vppo_masks_each_response_its_own_way(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """method=vppo: every response of a group gets its own masked view (the first of them the prompt's one view of
    masking.per_response=false), and the signal is computed on those views."""
    seen = _capture_prepared(monkeypatch)
    for name, extra in (("own", []), ("shared", ["masking.per_response=false"])):
        cfg = make_cfg([*FAST, "method=vppo", "algo=grpo", "seed=6", *extra])
        with open_dict(cfg):  # each run in a folder of its own
            cfg.paths.output_dir = cfg.paths.log_dir = str(tmp_path / name)
        train(cfg)
    (own, _, masked), (shared, _, shared_masked) = seen
    G = cfg.algo.group_size

    def pixels(exp, r):
        return exp.visual_masked[r]["pixel_values"]

    for start in range(0, len(own), G):
        assert len({pixels(own, r).numpy().tobytes() for r in range(start, start + G)}) > 1
        assert all(torch.equal(pixels(shared, r), pixels(shared, start)) for r in range(start, start + G))
        assert torch.equal(pixels(own, start), pixels(shared, start))
    assert torch.equal(own.response_ids, shared.response_ids)  # the same rollout: only the views differ
    assert not torch.equal(masked, shared_masked)
