"""The reproduction without training: its configs (arms, presets, launchers) compose, validate and agree with
each other; scripts/repro_report.py's statistics, table, CSV, plots and matched-SFT step count on fabricated
run directories; scripts/reproduce.py's stages; and train()'s resumability hook (``skip_finished``).
Real multiruns of the presets: tests/test_sweeps.py."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "configs" / "experiment" / "repro"
ARMS = sorted(p.stem for p in REPRO.glob("*.yaml") if not p.stem.startswith("_"))
T975_DF2 = 4.302652729911275  # two-sided 95% quantile of Student's t with 2 degrees of freedom (tables)


def _load_script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rr():
    return _load_script("repro_report")


@pytest.fixture(scope="module")
def wrapper(rr):
    return _load_script("reproduce")


def _repro(arm: str) -> dict:
    return yaml.safe_load((REPRO / f"{arm}.yaml").read_text())["repro"]


def _sweep_list(preset: str, key: str) -> list[str]:
    params = yaml.safe_load((ROOT / "configs" / preset).read_text())["hydra"]["sweeper"]["params"]
    return [x.strip().removeprefix("repro/") for x in str(params[key]).split(",")]


# ---------------------------------------------------------------------------------------------- configs


def test_arms_cover_the_claims() -> None:
    assert {"grpo", "papo_g", "dapo", "papo_d", "sft_continued", "sft_calibration"} <= set(ARMS)
    assert {"control_shuffled", "control_noise", "double_entropy"} <= set(ARMS)
    gammas = sorted(_repro(a)["curves"]["gamma"] for a in ARMS if "gamma" in _repro(a).get("curves", {}))
    assert gammas == [0.005, 0.01, 0.02, 0.04, 0.1]
    masks = sorted(_repro(a)["curves"]["mask"] for a in ARMS if "mask" in _repro(a).get("curves", {}))
    assert masks == [0.4, 0.6, 0.8, 1.0]
    for arm in ARMS:
        r = _repro(arm)
        assert r["arm"] == arm  # the row name is the file name
        assert set(r.get("contrasts", {})) <= set(ARMS), arm
        header = (REPRO / f"{arm}.yaml").read_text().splitlines()[:8]
        assert any(f"python src/train.py experiment=repro/{arm}" in line for line in header), arm


def test_presets_list_existing_arms_and_the_eval_presets_match_them() -> None:
    full, quick = (_sweep_list(f"reproduce/{m}.yaml", "experiment") for m in ("full", "quick"))
    assert set(full) <= set(ARMS) and set(quick) <= set(full) and len(quick) < len(full)
    testbed = _sweep_list("reproduce/testbed.yaml", "experiment")  # the shortcut testbed's comparison
    assert set(testbed) <= set(ARMS) and {"grpo", "papo_g", "sft_calibration"} <= set(testbed)
    assert set(ARMS) - set(full) - set(testbed) == {"sft_continued"}  # stage 2, with the measured step count
    assert "sft_calibration" in quick and {"grpo", "papo_g"} <= set(quick)  # what the SFT control needs
    for mode, arms in (("full", full), ("quick", quick)):
        train = yaml.safe_load((ROOT / "configs" / "reproduce" / f"{mode}.yaml").read_text())
        ev = yaml.safe_load((ROOT / "configs" / "reproduce_eval" / f"{mode}.yaml").read_text())
        other_view = [a for a in arms if not _repro(a).get("standard_view", True)]
        assert _sweep_list(f"reproduce_eval/{mode}.yaml", "repro_arm") == other_view, mode
        assert ev["repro_dir"] == train["hydra"]["sweep"]["dir"]
        assert ev["data"]["val_dataset"]["size"] == train["data"]["val_dataset"]["size"]
        seeds = ev["hydra"]["sweeper"]["params"]["seed"]
        assert (
            seeds
            == yaml.safe_load((ROOT / "configs/reproduce/_common.yaml").read_text())["hydra"]["sweeper"][
                "params"
            ]["seed"]
        )


@pytest.mark.parametrize("arm", [a for a in ARMS if a != "sft_continued"])
def test_every_arm_composes_and_validates_in_both_presets(arm: str) -> None:
    from papo.config_validation import validate_config

    for mode, steps, val in (("full", 150, 1000), ("quick", 40, 500)):
        cfg = compose_cfg([f"reproduce={mode}", f"experiment=repro/{arm}", "seed=1"])
        validate_config(cfg)
        assert cfg.repro.arm == arm and cfg.skip_finished and cfg.num_threads == 1
        assert (cfg.trainer.max_steps, cfg.data.val_dataset.size) == (steps, val)
        assert (cfg.rollout.val_sampled_k, cfg.rollout.val_sampled_temperature) == (4, 1.0)
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweep.subdir == f"{arm}/seed1"
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
        assert ("wandb" in cfg.logger) == (mode == "full")
        assert cfg.validate_before == (arm == "grpo")
        curves = cfg.repro.curves
        if "gamma" in curves:
            assert cfg.loss.gamma == curves.gamma == cfg.loss.components.perception_kl.gamma
        if "mask" in curves:
            assert cfg.masking.mask_prob == curves.mask
        if arm == "control_shuffled":
            assert cfg.masking._target_.endswith("ShuffledImageView")
        if cfg.repro.group == "calibration":
            assert cfg.trainer.limit_train_batches == 0 and not cfg.validate_after


def test_launchers_and_eval_preset_compose() -> None:
    cfg = compose_cfg(["reproduce=full", "experiment=repro/grpo", "hydra/launcher=slurm"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.cpus_per_task == 1
    ev = compose_cfg(["reproduce_eval=quick", "repro_arm=papo_g_mask1.0", "seed=2"], "eval")
    assert ev.ckpt_path.endswith("reproduce_quick/papo_g_mask1.0/seed2/checkpoints/last.ckpt")
    assert ev.masking.mask_prob == 0.6 and ev.masking._target_.endswith("RandomPatchMask")
    assert (ev.eval.split, ev.eval.samples, ev.eval.temperature, ev.eval.greedy) == ("val", 4, 1.0, False)
    assert ev.hydra.launcher._target_.endswith("JoblibLauncher")


# ---------------------------------------------------------------------------------------------- statistics


def test_mean_ci_is_the_t_interval() -> None:
    from papo.utils.seed_stats import mean_ci

    m, h, n = mean_ci([0.50, 0.51, 0.52])
    assert (m, n) == (pytest.approx(0.51), 3)
    assert h == pytest.approx(T975_DF2 * 0.01 / math.sqrt(3), rel=1e-9)
    assert mean_ci([0.5, None, float("nan"), 0.7])[2] == 2  # non-finite values are dropped
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([])[2] == 0
    assert mean_ci([0.3, 0.3, 0.3])[1] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- fake runs


def _fake_run(sweep: Path, arm: str, seed: int, acc: float, masked: float, **extra) -> Path:
    """A finished run as the pipeline leaves it: .hydra/config.yaml (the arm's repro node) + final_metrics."""
    d = sweep / arm / f"seed{seed}"
    (d / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "rollout": {"val_sampled_k": 4, "val_sampled_temperature": 1.0},
        "repro": _repro(arm),
    }
    OmegaConf.save(OmegaConf.create(cfg), d / ".hydra" / "config.yaml")
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
    final.update(seed=seed, policy_dir=str(extra.pop("policy_dir", sweep / "ws")), **extra)
    (d / "final_metrics.json").write_text(json.dumps(final))
    return d


def _warm_start_json(path: Path, seconds: float, steps: int) -> Path:
    path.mkdir(parents=True)
    (path / "warm_start.json").write_text(json.dumps({"seconds": seconds, "config": {"max_steps": steps}}))
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    out = tmp_path / "repro"
    before = {"val/sampled/acc": 0.40, "val/sampled/acc_masked": 0.30, "val/sampled/acc_by_vd/high": 0.3}
    prov = {"date": "2026-12-01T10:00:00", "commit": "abc123", "machine": {"cpu_count": 2}}
    for k in range(3):
        _fake_run(out, "grpo", k, 0.50 + 0.01 * k, 0.35, before=before, provenance=prov)
        _fake_run(out, "papo_g", k, 0.55 + 0.01 * k, 0.33)
        for g in (0.005, 0.01, 0.04, 0.1):
            _fake_run(out, f"papo_g_gamma{g}", k, 0.5 - g, 0.3)
        d = _fake_run(out, "papo_g_mask1.0", k, 0.52, 0.10)  # trained with another view: eval file wins
        (d / "eval").mkdir()
        (d / "eval" / "eval_val_last.json").write_text(
            json.dumps({"metrics": {"avg@4/acc_masked": 0.25, "greedy/acc_masked": 0.9}})
        )
        cont = _warm_start_json(tmp_path / f"ws_cont{k}", 90.0, 600)
        _fake_run(out, "sft_continued", k, 0.45, 0.30, policy_dir=cont)
        cal = _warm_start_json(tmp_path / f"ws_cal{k}", 10.0 + k, 50)
        _fake_run(out, "sft_calibration", k, 0.0, 0.0, policy_dir=cal)
    _fake_run(out, "papo_g_mask0.4", 0, 0.5, 0.3)  # one seed only, and no eval file
    (out / "papo_g_mask0.4" / "seed1" / ".hydra").mkdir(parents=True)  # started, never finished
    return out


def test_report_on_fabricated_runs(rr, sweep: Path) -> None:
    md = rr.report(sweep)
    rows = {r["arm"]: r for r in csv.DictReader((sweep / "results.csv").open())}
    assert list(rows)[:3] == ["warm_start", "grpo", "papo_g"] and "sft_calibration" not in rows
    assert float(rows["warm_start"]["acc_mean"]) == pytest.approx(0.40)
    g = rows["grpo"]
    assert int(g["n"]) == 3 and float(g["acc_mean"]) == pytest.approx(0.51)
    half = T975_DF2 * 0.01 / math.sqrt(3)  # t_{0.975,2} * sd / sqrt(n)
    assert float(g["acc_ci95_hi"]) - float(g["acc_mean"]) == pytest.approx(half, rel=1e-6)
    assert float(g["acc_vd_none_mean"]) == pytest.approx(0.71)
    assert float(g["vision_gap_mean"]) == pytest.approx(0.51 - 0.35)
    assert float(g["acc_greedy_mean"]) == pytest.approx(0.56)
    # default-view masked accuracy: from src/eval.py for arms trained with another view, n/a without it
    assert float(rows["papo_g_mask1.0"]["acc_masked_mean"]) == pytest.approx(0.25)
    assert rows["papo_g_mask1.0"]["masked_source"] == "eval"
    assert (
        math.isnan(float(rows["papo_g_mask0.4"]["acc_masked_mean"])) and int(rows["papo_g_mask0.4"]["n"]) == 1
    )
    # continued SFT reports its SFT wall time; RL arms their RL time
    assert float(rows["sft_continued"]["wall_s_mean"]) == pytest.approx(90.0)
    assert float(rows["grpo"]["wall_s_mean"]) == pytest.approx(101.0)
    diffs = {(d["a"], d["b"]): d for d in csv.DictReader((sweep / "differences.csv").open())}
    assert float(diffs[("papo_g", "grpo")]["mean"]) == pytest.approx(0.05)
    assert float(diffs[("papo_g", "grpo")]["ci95_hi"]) == pytest.approx(0.05)  # a constant difference
    assert float(diffs[("papo_g", "sft_continued")]["mean"]) == pytest.approx(0.11)
    assert ("papo_d", "dapo") not in diffs  # arms not run
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(runs) == 3 * 2 + 3 * 4 + 3 + 3 + 1  # grpo, papo_g, gammas, mask1.0, sft, mask0.4
    assert "| papo_g | 3 | 0.560 ± 0.025 |" in md and "PAPO-G vs GRPO" in md
    assert "commit(s) abc123" in md and "papo_g_mask0.4/seed1" in md  # provenance and unfinished runs
    assert "different settings" not in md


def test_report_flags_runs_launched_with_other_settings(rr, sweep: Path) -> None:
    for seed, steps in ((0, 150), (1, 150), (2, 40)):  # seed 2 was re-run with another step count
        final = json.loads((sweep / "grpo" / f"seed{seed}" / "final_metrics.json").read_text())
        final["provenance"]["command"] = (
            f"src/train.py seed={seed} experiment=repro/grpo trainer.max_steps={steps}"
        )
        (sweep / "grpo" / f"seed{seed}" / "final_metrics.json").write_text(json.dumps(final))
    md = rr.report(sweep)
    assert "**The runs were launched with different settings**" in md
    assert "- 2 run(s): `trainer.max_steps=150`" in md and "- 1 run(s): `trainer.max_steps=40`" in md
    for png in ("acc_by_arm.png", "gamma_curve.png", "mask_ratio_curve.png"):
        assert (sweep / png).stat().st_size > 1000, png


def test_report_writes_its_section_of_a_doc(rr, sweep: Path, tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n\nbefore\n<!-- repro:begin -->\nold\n<!-- repro:end -->\nafter\n")
    assert rr.main([str(sweep), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Doc\n\nbefore\n<!-- repro:begin -->\nGenerated ") and text.endswith("after\n")
    assert "old" not in text and "| papo_g | 3 | 0.560 ± 0.025 |" in text and "PAPO-G vs GRPO" in text
    assert f"--write {doc}" in text  # the command that regenerates it
    assert "# Reproduction on the embedded task" not in text  # the title stays the doc's own
    plain = tmp_path / "plain.md"
    plain.write_text("# A doc without the markers\n")
    with pytest.raises(ValueError, match="repro:begin"):
        rr.main([str(sweep), "--write", str(plain)])


def test_matched_sft_steps(rr, sweep: Path) -> None:
    runs = rr.find_runs(sweep)[0]
    steps, basis = rr.matched_sft_steps(runs)
    rl_mean = 100.0 + 1.0  # grpo and papo_g: 100, 101, 102 seconds
    per_step = (10.0 + 11.0 + 12.0) / 150  # the three calibrations pooled
    assert basis["sft_s_per_step"] == pytest.approx(per_step)
    assert steps == round(rl_mean / per_step) == 459
    with pytest.raises(SystemExit, match="sft_calibration"):
        rr.matched_sft_steps([r for r in runs if r.repro["group"] != "calibration"])


# ---------------------------------------------------------------------------------------------- the wrapper


def test_wrapper_runs_the_stages_with_the_measured_sft_steps(
    wrapper, sweep: Path, monkeypatch, capsys
) -> None:
    calls: list[list[str]] = []

    def fake_stage(cmd: list[str], record: dict) -> int:
        calls.append(cmd)
        record["stages"].append({"command": " ".join(cmd[1:]), "seconds": 60.0, "returncode": 0})
        return 0

    monkeypatch.setattr(wrapper, "run_stage", fake_stage)
    argv = ["--quick", "--out", str(sweep), "--streams", "3", "trainer.max_steps=2", "+callbacks.x=1"]
    rc = wrapper.main([*argv, "experiment=repro/grpo,repro/sft_calibration", "seed=0,1,2"])
    assert rc == 1  # papo_g_mask0.4/seed1 is unfinished
    assert [c[1:4] for c in calls] == [
        ["src/train.py", "-m", "reproduce=quick"],
        ["src/train.py", "-m", "reproduce=quick"],
        ["src/eval.py", "-m", "reproduce_eval=quick"],
    ]
    assert calls[1][-2:] == [
        "experiment=repro/sft_continued",
        "warm_start.continue_steps=459",
    ]  # last: it wins
    assert "experiment=repro/grpo,repro/sft_calibration" in calls[0] and "seed=0,1,2" in calls[2]
    assert not any(o.startswith("experiment=") for o in calls[2])  # the re-evaluation sweeps repro_arm
    assert f"hydra.sweep.dir={sweep}" in calls[0] and f"repro_dir={sweep}" in calls[2]
    assert all("hydra.launcher.n_jobs=3" in c and "trainer.max_steps=2" in c for c in calls)
    assert "+callbacks.x=1" in calls[0] and "+callbacks.x=1" not in calls[2]  # eval has no callbacks group
    timing = json.loads((sweep / "timing.json").read_text())["invocations"]
    assert len(timing) == 1 and len(timing[0]["stages"]) == 3 and timing[0]["commit"]
    assert "3.0 min in all" in (sweep / "results.md").read_text()
    capsys.readouterr()
    assert wrapper.main(["--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and "reproduce=full" in printed[0] and printed[3].endswith("logs/reproduce")


# ---------------------------------------------------------------------------------------------- pipeline hooks


class Stop(Exception):
    """Raised where a run would start loading its model."""


def _stop(*args, **kwargs):
    raise Stop


def test_skip_finished_returns_the_saved_metrics_without_training(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    import papo.pipeline as pipeline

    saved = {"after": {"val/acc": 0.7}, "before": {"val/acc": 0.5}, "rl_seconds": 1.0, "rl_steps": 2}
    (tmp_path / "final_metrics.json").write_text(json.dumps(saved))
    monkeypatch.setattr(pipeline, "resolve_model_dir", _stop)
    assert pipeline.train(make_cfg(["skip_finished=true"])) == {"val/acc": 0.7, "before/val/acc": 0.5}
    with pytest.raises(Stop):  # off by default: the run would train again
        pipeline.train(make_cfg())


def test_skip_finished_sets_an_unfinished_attempt_aside(make_cfg, tmp_path: Path, monkeypatch) -> None:
    import torch

    import papo.pipeline as pipeline

    stop = _stop
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / "step000002.ckpt"  # a resumable checkpoint (papo.utils.checkpointing)
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"policy.w": torch.zeros(1)}}, stale)
    stale_bytes = stale.read_bytes()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "reproduce.log").write_text("earlier attempt")
    monkeypatch.setattr(pipeline, "resolve_model_dir", stop)
    with pytest.raises(Stop):  # a resume (ckpt_path) keeps its checkpoints where they are
        pipeline.train(make_cfg(["skip_finished=true", "ckpt_path=last"]))
    assert (tmp_path / "checkpoints" / "step000002.ckpt").exists()
    with pytest.raises(Stop):
        pipeline.train(make_cfg(["skip_finished=true"]))
    (aside,) = tmp_path.glob("incomplete-*")
    assert (aside / "checkpoints" / "step000002.ckpt").read_bytes() == stale_bytes
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / ".hydra").is_dir() and (tmp_path / "reproduce.log").exists()  # Hydra's stay


def test_a_mandatory_value_left_unset_is_a_config_error(make_cfg) -> None:
    from papo.config_validation import ConfigError
    from papo.pipeline import train

    with pytest.raises(ConfigError, match=r"warm_start\.continue_steps=\?\?\? must be given"):
        train(make_cfg(["experiment=repro/sft_continued"]))


def test_continued_sft_control_runs_without_rl(make_cfg, tmp_path: Path) -> None:
    """The sft_continued arm: SFT continues from the cached warm start with the RL seed, no RL step runs, and
    final_metrics.json records the validated result and where the numbers come from."""
    from papo.pipeline import train

    cfg = make_cfg(["experiment=repro/sft_continued", "warm_start.continue_steps=2", "seed=7"])
    train(cfg)
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["rl_steps"] == 0 and final["seed"] == 7 and "val/acc" in final["after"]
    assert set(final["provenance"]) == {"date", "commit", "machine", "command"}
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


# ---------------------------------------------------------------------------------------------- seed_summary


def test_seed_summary_regenerates_the_results_section(tmp_path: Path) -> None:
    ss = _load_script("seed_summary")
    sweep = tmp_path / "multiruns" / "t"
    for job, (seed, b, a) in enumerate(((1, 0.40, 0.45), (2, 0.42, 0.48), (3, 0.41, 0.50))):
        (sweep / str(job)).mkdir(parents=True)
        prov = {"date": f"2026-12-0{job + 1}T10:00:00", "commit": "feedbee", "machine": {"cpu_count": 2}}
        final = {"seed": seed, "rl_steps": 400, "rl_seconds": 250.0, "provenance": prov}
        final["before"] = {"val/sampled/acc": b, "val/acc": 0.5}
        final["after"] = {"val/sampled/acc": a, "val/acc": 0.5}
        (sweep / str(job) / "final_metrics.json").write_text(json.dumps(final))
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["seed=1,2,3"]}}}))
    doc = tmp_path / "results.md"
    doc.write_text((ROOT / "docs" / "results.md").read_text())
    prose = doc.read_text().split("<!-- results:begin -->")[0]
    assert ss.main([str(sweep), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(prose) and text.rstrip().endswith("<!-- results:end -->")
    section = text.split("<!-- results:begin -->")[1]
    assert "`python src/train.py -m seed=1,2,3`" in section and "commit feedbee" in section
    assert "2026-12-01T10:00:00 .. 2026-12-03T10:00:00" in section and "2 CPUs" in section
    change = [0.05, 0.06, 0.09]  # after - before per seed; mean 0.0667, sd 0.0208
    half = T975_DF2 * statistics.stdev(change) / math.sqrt(3)
    assert f"| 41.0 ± {100 * T975_DF2 * 0.01 / math.sqrt(3):.1f} | 47.7 ±" in section
    assert f"| {100 * statistics.fmean(change):.1f} ± {100 * half:.1f} | +5.0, +6.0, +9.0 |" in section
    assert "| `val/acc` | greedy | 50.0 ± 0.0 | 50.0 ± 0.0 | 0.0 ± 0.0 |" in section
    assert ss.main([str(sweep), "--write", str(doc)]) == 0  # markers kept: it regenerates again
    assert doc.read_text().count("<!-- results:begin -->") == 1
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="results:begin"):
        ss.main([str(sweep), "--write", str(tmp_path / "plain.md")])
