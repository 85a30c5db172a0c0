"""scripts/reproduce.py without training: command construction (every arm's overrides compose and validate),
resume bookkeeping, the statistics, and the table / CSV / plots on fake ``final_metrics.json`` files."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _value(cmd: list[str], key: str) -> str | None:
    hits = [c.split("=", 1)[1] for c in cmd if c.startswith(key + "=")]
    assert len(hits) <= 1, f"{key} given twice in {cmd}"
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------- arms, commands


def test_arms_cover_the_issue(rp) -> None:
    names = set(rp.ARMS_BY_NAME)
    assert {"grpo", "papo_g", "dapo", "papo_d", "sft_continued"} <= names
    gammas = sorted({a.x for a in rp.ARMS if a.group == "gamma"} | {rp.STANDARD_GAMMA})
    assert gammas == [0.005, 0.01, 0.02, 0.04, 0.1]
    masks = sorted({a.x for a in rp.ARMS if a.group == "mask"} | {rp.STANDARD_MASK})
    assert masks == [0.4, 0.6, 0.8, 1.0]
    assert {"control_shuffled", "control_noise", "double_entropy"} <= names
    assert set(rp.QUICK_ARMS) <= names and len(rp.QUICK_ARMS) < len(names)
    for a, b, _ in rp.CONTRASTS:
        assert a in names and b in names


def test_every_arm_composes_and_validates(rp) -> None:
    """Each arm's overrides (and the common ones) compose into a config that passes validate_config."""
    from papo.config_validation import validate_config

    s = rp.settings_for(False, [0, 1, 2])
    for arm in rp.ARMS:
        cmd = rp.train_command(arm, [0], s, Path("/tmp/out"), sft_steps=5)
        overrides = [c for c in cmd[3:] if not c.startswith(("hydra.", "seed="))]
        cfg = compose_cfg(overrides)
        validate_config(cfg)
        if arm.group == "mask":
            assert cfg.masking.mask_prob == arm.x
        if arm.group == "gamma":
            assert cfg.loss.gamma == arm.x
        if arm.name == "control_shuffled":
            assert cfg.masking._target_.endswith("ShuffledImageView")
        assert cfg.trainer.max_steps == rp.FULL_STEPS


def test_train_command(rp, tmp_path: Path) -> None:
    s = rp.settings_for(True, [0, 1, 2])
    arm = rp.ARMS_BY_NAME["papo_g_gamma0.1"]
    cmd = rp.train_command(arm, [1, 2], s, tmp_path)
    assert cmd[1].endswith("src/train.py") and cmd[2] == "-m"
    assert _value(cmd, "loss.gamma") == "0.1" and _value(cmd, "loss") == "papo_g"
    assert _value(cmd, "seed") == "1,2"
    assert _value(cmd, "hydra.sweep.dir") == str(tmp_path / "papo_g_gamma0.1")
    assert _value(cmd, "hydra.sweep.subdir") == "seed${seed}"
    assert _value(cmd, "trainer.max_steps") == str(rp.QUICK_STEPS)
    assert _value(cmd, "data.val_dataset.size") == str(rp.QUICK_VAL)
    assert _value(cmd, "logger") == "csv" and _value(cmd, "logger.wandb.group") is None
    assert _value(cmd, "validate_before") == "false"
    assert _value(cmd, "rollout.val_sampled_k") == str(rp.SAMPLED_K)  # the table's protocol, explicitly
    full = rp.settings_for(False, [0, 1, 2], extra=["trainer=gpu"])
    cmd = rp.train_command(rp.ARMS_BY_NAME["grpo"], [0, 1, 2], full, tmp_path)
    assert _value(cmd, "logger") is None and _value(cmd, "logger.wandb.group") == "reproduce-grpo"
    assert _value(cmd, "validate_before") == "true" and cmd[-1] == "trainer=gpu"
    sft = rp.train_command(rp.ARMS_BY_NAME["sft_continued"], [0], full, tmp_path, sft_steps=640)
    assert _value(sft, "+warm_start.continue_steps") == "640"
    assert _value(sft, "+trainer.limit_train_batches") == "0"


def test_calibration_and_eval_commands(rp, tmp_path: Path) -> None:
    s = rp.settings_for(True, [0, 1, 2])
    cal = rp.calibration_command(s, tmp_path)
    assert _value(cal, "logger") == "csv"  # not given twice
    assert _value(cal, "validate_after") == "false"
    assert _value(cal, "+warm_start.continue_steps") == str(s.calibration_steps)
    ckpts = [tmp_path / "a" / "seed0" / "checkpoints" / "last.ckpt", tmp_path / "b" / "seed0" / "x.ckpt"]
    ev = rp.eval_command(ckpts, 0, s, tmp_path)
    assert ev[1].endswith("src/eval.py") and ev[2] == "-m"
    assert _value(ev, "ckpt_path") == ",".join(str(c) for c in ckpts)
    assert _value(ev, "masking") == "random_patch" and _value(ev, "seed") == "0"
    assert _value(ev, "eval.split") == "val" and _value(ev, "eval.samples") == str(rp.SAMPLED_K)
    assert f"avg@{rp.SAMPLED_K}/acc_masked" == rp.EVAL_MASKED_KEY
    cfg = compose_cfg([c for c in ev[3:] if not c.startswith(("hydra.", "ckpt_path="))], "eval")
    assert cfg.eval.temperature == rp.SAMPLED_T and not cfg.eval.greedy
    assert cfg.masking.mask_prob == 0.6 and cfg.data.val_dataset.size == rp.QUICK_VAL
    # training overrides reach the eval only where they shape the model, data or decoding
    extra = ["trainer=gpu", "num_threads=1", "rollout.max_new_tokens=8", "masking.mask_prob=0.4"]
    s2 = rp.settings_for(True, [0, 1, 2], extra=extra, eval_extra=["eval.limit=100"])
    ev = rp.eval_command(ckpts, 0, s2, tmp_path)
    assert ev[-3:] == ["num_threads=1", "rollout.max_new_tokens=8", "eval.limit=100"]
    assert _value(ev, "masking") == "random_patch" and _value(ev, "masking.mask_prob") is None
    compose_cfg([c for c in ev[3:] if not c.startswith(("hydra.", "ckpt_path="))], "eval")


def test_expected_times(rp) -> None:
    quick = rp.expected_seconds(rp.settings_for(True, [0, 1, 2]))  # default: 2 streams
    full = rp.expected_seconds(rp.settings_for(False, [0, 1, 2]))
    assert quick <= 20 * 60, quick
    assert 60 * 60 < full < 3 * 3600, full
    assert rp.expected_seconds(rp.settings_for(True, [0, 1, 2]), streams=1) > quick
    assert rp.sft_steps_from_timing([100.0, 96.0], 15.0, 100) == round(98 / 0.15)
    with pytest.raises(ValueError):
        rp.sft_steps_from_timing([], 15.0, 100)


def test_cli_refuses_fewer_than_three_seeds(rp) -> None:
    with pytest.raises(SystemExit):
        rp.main(["--dry-run", "--seeds", "0", "1"])


# ---------------------------------------------------------------------------------------------- statistics


def test_mean_ci_matches_scipy(rp) -> None:
    stats = pytest.importorskip("scipy.stats")
    xs = [0.52, 0.55, 0.49, 0.51]
    m, h, n = rp.mean_ci(xs)
    sem = stats.sem(xs)
    assert n == 4 and m == pytest.approx(sum(xs) / 4)
    assert h == pytest.approx(stats.t.ppf(0.975, 3) * sem, rel=1e-3)
    for df in (1, 2, 5, 30):
        assert rp.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert math.isnan(rp.mean_ci([0.5])[1]) and rp.mean_ci([])[2] == 0
    assert rp.mean_ci([0.5, float("nan"), 0.7])[2] == 2  # non-finite values are dropped


# ---------------------------------------------------------------------------------------------- fake runs


def _fake_run(out: Path, arm: str, seed: int, acc: float, masked: float, **extra) -> Path:
    d = out / arm / f"seed{seed}"
    d.mkdir(parents=True)
    after = {  # the table reads the sampled protocol (val/sampled/*) and greedy val/acc aside
        "val/sampled/acc": acc,
        "val/sampled/acc_masked": masked,
        "val/sampled/acc_by_vd/high": acc - 0.1,
        "val/sampled/acc_by_vd/medium": acc,
        "val/sampled/acc_by_vd/none": acc + 0.2,
        "val/acc": acc + 0.05,
        "val/acc_masked": 0.99,  # greedy masked accuracy is not a column: must not leak into acc_masked
    }
    final = {"after": after, "before": extra.pop("before", {}), "rl_seconds": 100.0 + seed, "rl_steps": 150}
    final.update(seed=seed, policy_dir=str(extra.pop("policy_dir", out / "ws")), **extra)
    (d / "final_metrics.json").write_text(json.dumps(final))
    return d


@pytest.fixture
def fake_out(rp, tmp_path: Path) -> Path:
    out = tmp_path / "repro"
    before = {"val/sampled/acc": 0.40, "val/sampled/acc_masked": 0.30, "val/sampled/acc_by_vd/high": 0.3}
    for k in range(3):
        _fake_run(out, "grpo", k, 0.50 + 0.01 * k, 0.35, before=before)
        _fake_run(out, "papo_g", k, 0.55 + 0.01 * k, 0.33)
        for g in (0.005, 0.01, 0.04, 0.1):
            _fake_run(out, f"papo_g_gamma{g}", k, 0.5 - g, 0.3)
        d = _fake_run(out, "papo_g_mask1.0", k, 0.52, 0.10)  # trained with another view: eval file wins
        (d / "eval").mkdir()
        (d / "eval" / "eval_val_last.json").write_text(
            json.dumps({"metrics": {"avg@4/acc_masked": 0.25, "greedy/acc_masked": 0.9}})
        )
        ws = tmp_path / f"ws_cont{k}"
        ws.mkdir()
        (ws / "warm_start.json").write_text(json.dumps({"seconds": 90.0, "config": {"max_steps": 600}}))
        _fake_run(out, "sft_continued", k, 0.45, 0.30, policy_dir=ws)
    _fake_run(out, "papo_g_mask0.4", 0, 0.5, 0.3)  # one seed only, and no eval file
    return out


def test_report_on_fake_runs(rp, fake_out: Path) -> None:
    gammas = [f"papo_g_gamma{g}" for g in (0.005, 0.01, 0.04, 0.1)]
    arms = ["grpo", "papo_g", "sft_continued", "papo_g_mask1.0", "papo_g_mask0.4", *gammas]
    s = rp.settings_for(False, [0, 1, 2], arms=arms)
    md = rp.report(s, fake_out)
    rows = {r["arm"]: r for r in csv.DictReader((fake_out / "results.csv").open())}
    assert next(iter(rows)) == "warm_start" and float(rows["warm_start"]["acc_mean"]) == pytest.approx(0.40)
    g = rows["grpo"]
    assert int(g["n"]) == 3 and float(g["acc_mean"]) == pytest.approx(0.51)
    half = 4.303 * 0.01 / math.sqrt(3)  # t_{0.975,2} * sd / sqrt(n)
    assert float(g["acc_ci95_hi"]) - float(g["acc_mean"]) == pytest.approx(half, rel=1e-3)
    assert float(g["acc_vd_none_mean"]) == pytest.approx(0.71)
    assert float(g["vision_gap_mean"]) == pytest.approx(0.51 - 0.35)
    assert float(g["acc_greedy_mean"]) == pytest.approx(0.56)
    # default-view masked accuracy: from src/eval.py for arms trained with another view
    assert float(rows["papo_g_mask1.0"]["acc_masked_mean"]) == pytest.approx(0.25)
    assert rows["papo_g_mask1.0"]["masked_source"] == "eval"
    assert math.isnan(
        float(rows["papo_g_mask0.4"]["acc_masked_mean"])
    )  # eval missing: n/a, not the wrong view
    assert int(rows["papo_g_mask0.4"]["n"]) == 1
    # continued SFT reports its SFT wall time
    assert float(rows["sft_continued"]["wall_s_mean"]) == pytest.approx(90.0)
    assert float(rows["grpo"]["wall_s_mean"]) == pytest.approx(101.0)
    # paired differences
    diffs = {(d["a"], d["b"]): d for d in csv.DictReader((fake_out / "differences.csv").open())}
    assert float(diffs[("papo_g", "grpo")]["mean"]) == pytest.approx(0.05)
    assert float(diffs[("papo_g", "grpo")]["ci95_hi"]) == pytest.approx(0.05)  # constant difference
    assert ("papo_d", "dapo") not in diffs  # arms not run
    runs = list(csv.DictReader((fake_out / "runs.csv").open()))
    assert len(runs) == 3 + 3 * 2 + 3 * 2 + 1 + 4 * 3
    assert "| papo_g | 3 | 0.560 ± 0.025 |" in md
    assert "PAPO-G vs GRPO" in md
    for png in ("acc_by_arm.png", "gamma_curve.png", "mask_ratio_curve.png"):
        assert (fake_out / png).stat().st_size > 1000, png


def test_report_without_curves(rp, tmp_path: Path) -> None:
    out = tmp_path / "r"
    for k in range(3):
        _fake_run(out, "grpo", k, 0.5, 0.4)
    rp.report(rp.settings_for(True, [0, 1, 2]), out)
    assert (out / "acc_by_arm.png").exists() and not (out / "gamma_curve.png").exists()
    assert not (out / "differences.csv").exists()


# ---------------------------------------------------------------------------------------------- resume


def test_resume_runs_only_missing_seeds(rp, fake_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], log_file: Path, dry_run: bool) -> int:
        calls.append(cmd)
        return 0

    monkeypatch.setattr(rp, "_run", fake_run)
    partial = fake_out / "papo_g_mask0.4" / "seed1"
    partial.mkdir(parents=True)
    (partial / "train.log").write_text("interrupted")
    s = rp.settings_for(False, [0, 1, 2], arms=["grpo", "papo_g", "papo_g_mask0.4", "papo_g_mask1.0"])
    assert rp.run_all(s, fake_out)
    train_calls = [c for c in calls if c[1].endswith("train.py")]
    assert len(train_calls) == 1  # grpo, papo_g and mask1.0 are finished
    assert _value(train_calls[0], "seed") == "1,2" and "masking.mask_prob=0.4" in train_calls[0]
    assert not partial.exists() and any((fake_out / "_incomplete").iterdir())  # set aside, not deleted
    # mask0.4 seed0 is finished but not re-evaluated with the default view yet; mask1.0 already is
    eval_calls = [c for c in calls if c[1].endswith("eval.py")]
    assert len(eval_calls) == 1 and "papo_g_mask0.4/seed0/" in _value(eval_calls[0], "ckpt_path")


def test_sft_arm_waits_for_rl_times_then_calibrates(rp, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "o"
    calls: list[list[str]] = []
    ws = tmp_path / "cont"
    ws.mkdir()
    (ws / "warm_start.json").write_text(json.dumps({"seconds": 15.0, "config": {"max_steps": 100}}))

    def fake_run(cmd: list[str], log_file: Path, dry_run: bool) -> int:
        calls.append(cmd)
        if _value(cmd, "hydra.run.dir"):  # the calibration run
            cal = Path(_value(cmd, "hydra.run.dir"))
            cal.mkdir(parents=True, exist_ok=True)
            (cal / "final_metrics.json").write_text(json.dumps({"after": {}, "policy_dir": str(ws)}))
        return 0

    monkeypatch.setattr(rp, "_run", fake_run)
    s = rp.settings_for(False, [0, 1, 2], arms=["sft_continued"])
    assert not rp.run_all(s, out)  # no grpo / papo_g times yet: skipped, reported as not done
    assert calls == []
    for k in range(3):
        _fake_run(out, "grpo", k, 0.5, 0.4)  # rl_seconds 100, 101, 102
    assert rp.run_all(s, out)
    assert json.loads((out / "_calibration" / "sft_timing.json").read_text()) == {
        "seconds": 15.0,
        "steps": 100,
    }
    assert _value(calls[-1], "+warm_start.continue_steps") == str(round(101 / 0.15))


def test_plan_mismatch_is_refused(rp, tmp_path: Path) -> None:
    rp.check_plan(rp.settings_for(True, [0, 1, 2]), tmp_path, dry_run=False)
    rp.check_plan(rp.settings_for(True, [3, 4, 5]), tmp_path, dry_run=False)  # seeds may grow
    with pytest.raises(SystemExit, match="other settings"):
        rp.check_plan(rp.settings_for(False, [0, 1, 2]), tmp_path, dry_run=False)


# ---------------------------------------------------------------------------------------------- pipeline hooks


def test_continued_sft_control_runs_without_rl(make_cfg, tmp_path: Path) -> None:
    """``+warm_start.continue_steps`` + ``+trainer.limit_train_batches=0``: SFT continues from the cached
    warm start with the RL seed, no RL step runs, and final_metrics.json records the validated result."""
    from papo.pipeline import train

    cfg = make_cfg(
        ["+warm_start.continue_steps=2", "+trainer.limit_train_batches=0", "validate_before=false", "seed=7"]
    )
    train(cfg)
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["rl_steps"] == 0 and final["seed"] == 7 and "val/acc" in final["after"]
    ws = json.loads((Path(final["policy_dir"]) / "warm_start.json").read_text())
    assert ws["config"]["max_steps"] == 2 and ws["config"]["seed"] == 7
    assert "continue_steps" not in ws["config"]
    assert Path(final["policy_dir"]).name.count("-") == 3  # <model>-<warm start>-<continuation>, cached
    # it continues FROM the warm start every RL run shares (continue_* keys do not change its cache key)
    shared_ws = Path(final["policy_dir"]).parent / Path(final["policy_dir"]).name.rsplit("-", 1)[0]
    rl = make_cfg(["validate_before=false", "validate_after=false", "trainer.max_steps=1", "seed=7"])
    train(rl)
    rl_final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert Path(rl_final["policy_dir"]) == shared_ws


# ---------------------------------------------------------------------------------------------- streams


def test_streams_balance_the_arms_and_keep_the_sft_control_after_its_rl_arms(rp) -> None:
    s = rp.settings_for(False, [0, 1, 2])
    groups = rp.split_streams(s, 2)
    assert sorted(a for g in groups for a in g) == sorted(s.arms)  # every arm once
    first = list(groups[0])
    assert first.index("sft_continued") > max(first.index(a) for a in rp.SFT_MATCH)
    loads = [rp.estimate_seconds(rp.replace(s, arms=g)) for g in groups]
    assert max(loads) < 0.6 * rp.estimate_seconds(s)  # close to half each
    quick = rp.settings_for(True, [0, 1, 2], arms=["grpo", "papo_g_gamma0.1"])  # no SFT arm: nothing pinned
    assert sorted(rp.split_streams(quick, 2)) == [("grpo",), ("papo_g_gamma0.1",)]
    assert rp.split_streams(quick, 5) == rp.split_streams(quick, 2)  # no empty streams


def test_stream_processes_get_their_arms_and_one_thread(rp, tmp_path: Path, monkeypatch) -> None:
    launched: list[list[str]] = []

    class FakeProc:
        def __init__(self, cmd, **kw) -> None:
            launched.append(cmd)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(rp.subprocess, "Popen", FakeProc)
    argv = ["--quick", "--arms", "grpo", "papo_g", "--streams", "2", "--out", str(tmp_path)]
    assert rp.main(argv) == 1  # the fake streams ran nothing: reported as unfinished
    assert len(launched) == 2
    for cmd in launched:
        assert "--runs-only" in cmd and cmd[cmd.index("--streams") + 1] == "1"  # a stream does not split
        assert cmd.count("--streams") == 1
        assert cmd[cmd.index("--override") + 1] == "num_threads=1"
        assert cmd.count("--arms") == 1 and cmd[cmd.index("--arms") + 1] in ("grpo", "papo_g")
    assert json.loads((tmp_path / "plan.json").read_text())["extra"] == ["num_threads=1"]
    assert rp._strip_option(["--a", "x", "y", "--b", "z"], "--a") == ["--b", "z"]
    assert rp._strip_option(["--a=3", "--b", "z"], "--a") == ["--b", "z"]
