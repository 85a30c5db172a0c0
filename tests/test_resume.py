"""Exact resume: a run SIGKILLed after N steps and resumed with ``ckpt_path=last`` ends bit-identical to an
uninterrupted 2N-step run (weights, optimiser state, logged rewards and losses of the second half), and the
pieces that make it so (RNG states, dynamic-sampling buffer, ckpt_path lookup, log preservation).

The end-to-end test runs ``python src/train.py`` in subprocesses on CPU (one thread, deterministic
algorithms). The killed run is frozen by ``fault_injection.PauseAtStep`` at the start of step N+1 (checkpoint
N on disk, batch N+1 already fetched) and then SIGKILLed from here. The uninterrupted run also checks that
credentials in the environment never reach the run directory (config, logs, CSV, W&B offline files).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_OVERRIDES
from papo.utils.checkpointing import (
    CheckpointNotFoundError,
    experience_from_state,
    experience_state,
    newest_checkpoint,
    preserve_csv_log,
    resolve_ckpt_path,
    rng_state,
    set_rng_state,
)
from papo.utils.secrets import REDACTED, is_secret_key, redact_secrets

ROOT = Path(__file__).resolve().parents[1]
N = 3  # checkpoint / kill after N steps, train to 2N
SECRETS = {"WANDB_API_KEY": "wandb-key-0123456789abcdef", "HF_TOKEN": "hf_secret_token_9876543210"}


def _cmd(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_steps=")]
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        *tiny,
        f"trainer.max_steps={2 * N}",
        "trainer.deterministic=true",
        "++num_threads=1",
        "validate_before=false",
        "validate_after=false",
        "logger=csv",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update(
        WANDB_MODE="offline", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    )
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _train_rows(run_dir: Path, name: str = "metrics.csv") -> dict[int, dict[str, str]]:
    with (run_dir / "csv" / name).open() as f:
        return {int(r["step"]): r for r in csv.DictReader(f) if r.get("train/reward/mean")}


# DAPO + PAPO-D with a linear gamma schedule over the whole run and a cosine LR schedule (warm-up, then decay
# through the resume): the gamma-schedule state, DAPO's dynamic-sampling state (several rollout batches per
# optimiser step) and the LR scheduler must all come back. The 3-step warm start of TINY_OVERRIDES never
# answers correctly, so DAPO's filter would keep nothing: a 40-step warm start, 24-token responses and T = 0.5
# give mixed groups.
DAPO_VARIANT = [
    "algo=dapo",
    "loss=papo_d",
    "loss.schedule=linear",
    "loss.anneal_fraction=1.0",
    "optim.scheduler.name=cosine",
    f"optim.warmup_steps={N - 1}",
    "warm_start.max_steps=40",
    "warm_start.batch_size=16",
    "rollout.max_new_tokens=24",
    "rollout.temperature=0.5",
]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["grpo", "dapo_schedules"])
def test_sigkill_then_resume_is_bit_identical(variant: str, tmp_path: Path, cache_dir: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    extra = DAPO_VARIANT if variant == "dapo_schedules" else []
    scan_secrets = variant == "grpo"  # the credential scan needs one run, with W&B (slower): the first

    # 1) uninterrupted 2N steps (grpo: with credentials in the environment and a config key that reads one)
    if scan_secrets:
        _run(
            _cmd(full, cache_dir, *extra, "logger=default", "+notes.hf_token=${oc.env:HF_TOKEN}"),
            _env(**SECRETS),
        )
    else:
        _run(_cmd(full, cache_dir, *extra), _env())

    # 2) the same run, frozen at the start of step N+1 and SIGKILLed
    marker = tmp_path / "paused"
    pause = [
        "+callbacks.pause._target_=fault_injection.PauseAtStep",
        f"+callbacks.pause.step={N}",
        f"+callbacks.pause.marker={marker}",
    ]
    proc = subprocess.Popen(
        _cmd(killed, cache_dir, *extra, *pause),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), (
            f"the run never reached step {N}: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert newest_checkpoint(killed / "checkpoints").name == "last.ckpt"
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == N

    # 3) resume in the killed run's directory
    _run(_cmd(killed, cache_dir, *extra, "ckpt_path=last"), _env())

    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * N
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), f"weights differ: {k}"
    for (ka, va), (kb, vb) in zip(
        a["optimizer_states"][0]["state"].items(), b["optimizer_states"][0]["state"].items(), strict=True
    ):
        assert ka == kb and all(torch.equal(va[s], vb[s]) for s in va), f"optimiser state differs: {ka}"
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert torch.equal(a["papo"]["rng"]["torch"], b["papo"]["rng"]["torch"])
    for key in ("tries", "group_counter"):
        assert a["papo"][key] == b["papo"][key], key

    # logged rewards, losses, lengths of the second half are identical; the first half's log was kept.
    # CSV rows are keyed by rollout batch (Lightning's step counter): with DAPO's dynamic sampling an
    # optimiser step takes several batches, so the second half starts at the batch the checkpoint recorded
    rows_a, rows_b = _train_rows(full), _train_rows(killed)
    first = min(rows_b)
    assert sorted(rows_b) == [s for s in sorted(rows_a) if s >= first]
    assert sorted(_train_rows(killed, "metrics.part0.csv")) == [s for s in sorted(rows_a) if s < first]
    # every value the resumed run logged is the uninterrupted run's. (A DAPO rollout batch that does not step
    # the optimiser logs only its rollout metrics, and the CSV repeats the previous step's other values in
    # its row; the resumed run's first such rows have none to repeat, so only its non-empty cells count.)
    for step, row in rows_b.items():
        keys = [k for k in row if k.startswith("train/") and row[k] != ""]
        assert [rows_a[step].get(k) for k in keys] == [row[k] for k in keys], f"step {step} differs"
    logged = {k for r in rows_b.values() for k in r if r[k] != ""}
    assert {"train/reward/mean", "train/loss/total", "train/response/length_mean", "train/optim/lr"} <= logged

    def values(key: str) -> set[str]:
        return {r[key] for r in rows_b.values() if r.get(key)}

    if variant == "grpo":  # one row per optimiser step: every cell is compared
        assert sorted(rows_b) == list(range(N, 2 * N))
        for step, row in rows_b.items():
            assert {k for k in row if row[k] != ""} == {k for k in rows_a[step] if rows_a[step][k] != ""}
    else:  # the schedules and the dynamic sampling really moved during the resumed half
        assert len(values("train/optim/lr")) == N, "the LR schedule did not continue"
        assert len(values("train/perception_kl/gamma")) == N, "gamma did not anneal"
        assert len(rows_b) > N and max(float(v) for v in values("train/dynamic_sampling/tries")) > 1

    if not scan_secrets:
        return
    # no credential reached any file of the uninterrupted run's directory (config, logs, CSV, W&B,
    # checkpoints)
    hits = [
        str(p)
        for p in full.rglob("*")
        if p.is_file() and any(s.encode() in p.read_bytes() for s in SECRETS.values())
    ]
    assert not hits, f"credentials written to {hits}"
    assert any(p.suffix == ".ckpt" for p in full.rglob("*")), "no checkpoint was scanned"
    assert f"notes.hf_token: '{REDACTED}'" in (full / "csv" / "hparams.yaml").read_text()


# ------------------------------------------------------------------------------------------- unit pieces
def test_rng_state_round_trip_is_weights_only_safe(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.save({"rng": state}, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_dynamic_sampling_buffer_round_trip(tmp_path: Path) -> None:
    from papo.rollout.experience import Experience

    exp = Experience(
        prompt_ids=torch.arange(6).view(2, 3),
        prompt_mask=torch.ones(2, 3),
        response_ids=torch.arange(8).view(2, 4),
        response_mask=torch.ones(2, 4),
        group_ids=torch.tensor([5, 5]),
        rewards=torch.tensor([0.0, 1.0]),
        accuracy=torch.tensor([0.0, 1.0]),
        format=torch.tensor([1.0, 1.0]),
        visual=[{"pixel_values": torch.ones(4, 6), "image_grid_thw": torch.tensor([[1, 2, 2]])}] * 2,
        extra={"mm_token_type_ids": torch.zeros(2, 3, dtype=torch.long)},
        task_type=["count", "count"],
        vision_dependency=["high", "high"],
        texts=["a", "b"],
    )
    torch.save({"buffer": [experience_state(exp)]}, tmp_path / "buf.pt")
    back = experience_from_state(torch.load(tmp_path / "buf.pt", weights_only=True)["buffer"][0])
    for name, value in experience_state(exp).items():
        other = getattr(back, name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), name
        elif name == "visual":
            assert all(
                torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(value, other, strict=True)
            )
        elif name == "extra":
            assert torch.equal(value["mm_token_type_ids"], other["mm_token_type_ids"])
        else:
            assert value == other, name


def test_module_resume_state_round_trip(make_cfg, tmp_path: Path) -> None:
    """PapoModule.on_save_checkpoint -> torch.save -> load(weights_only) -> on_load_checkpoint restores the
    dynamic-sampling buffer and counters, and the next training step starts from the saved RNG state."""
    from papo.data.synthetic import synthetic_corpus
    from papo.models.papo_module import PapoModule
    from papo.pipeline import resolve_model_dir

    cfg = make_cfg(["loss=none", "masking=none", "algo=dapo"])
    path = resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus)

    def module() -> PapoModule:
        from omegaconf import OmegaConf

        c = {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("model", "algo", "rollout", "reward", "optim")
        }
        return PapoModule(
            str(path), c["model"], c["algo"], c["rollout"], c["reward"], c["optim"], total_steps=4
        )

    a = module()
    a.resume_state.group_counter, a.resume_state.skipped_rows = 17, 5
    a.guard.skipped_steps, a.guard.consecutive_skips = 2, 1
    test_exp = _tiny_experience()
    a.source.dynamic_sampler.tries, a.source.dynamic_sampler.buffer = 3, [test_exp]
    checkpoint: dict = {"state_dict": {}}
    a.on_save_checkpoint(checkpoint)
    after_save = torch.rand(3)  # what the next step would draw
    torch.save(checkpoint, tmp_path / "c.ckpt")
    b = module()
    torch.manual_seed(1234)  # anything in between is overridden at the next step start
    b.on_load_checkpoint(torch.load(tmp_path / "c.ckpt", weights_only=True))
    assert (
        b.resume_state.group_counter,
        b.source.dynamic_sampler.tries,
        b.guard.skipped_steps,
        b.guard.consecutive_skips,
        b.resume_state.skipped_rows,
    ) == (
        17,
        3,
        2,
        1,
        5,
    )
    buffer = b.source.dynamic_sampler.buffer
    assert len(buffer) == 1 and torch.equal(buffer[0].response_ids, test_exp.response_ids)
    b.on_train_batch_start({"skipped_rows": ["row 9: bad"]}, 0)
    assert torch.equal(torch.rand(3), after_save)
    assert b.resume_state.skipped_rows == 6


def _tiny_experience():
    from papo.rollout.experience import Experience

    return Experience(
        prompt_ids=torch.ones(1, 2, dtype=torch.long),
        prompt_mask=torch.ones(1, 2),
        response_ids=torch.tensor([[7, 8]]),
        response_mask=torch.ones(1, 2),
        group_ids=torch.tensor([0]),
        rewards=torch.tensor([1.0]),
        accuracy=torch.tensor([1.0]),
        format=torch.tensor([1.0]),
        visual=[None],
    )


def test_resolve_ckpt_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    assert resolve_ckpt_path(None, ckpts) is None and resolve_ckpt_path("", ckpts) is None
    with pytest.raises(CheckpointNotFoundError, match=r"ckpt_path=last: no \*\.ckpt in .*hydra\.run\.dir"):
        resolve_ckpt_path("last", ckpts)
    ckpts.mkdir(parents=True)
    for i, name in enumerate(["step000001.ckpt", "step000002.ckpt", "last.ckpt"]):
        (ckpts / name).write_bytes(b"x")
        os.utime(ckpts / name, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    assert resolve_ckpt_path("last", ckpts) == str(ckpts / "last.ckpt")
    os.utime(ckpts / "last.ckpt", ns=(10**9, 10**9))
    assert resolve_ckpt_path("last", ckpts) == str(ckpts / "step000002.ckpt")  # newest wins
    assert resolve_ckpt_path(str(run), tmp_path / "elsewhere") == str(ckpts / "step000002.ckpt")  # a run dir
    assert resolve_ckpt_path(str(ckpts / "step000001.ckpt"), ckpts) == str(ckpts / "step000001.ckpt")
    with pytest.raises(CheckpointNotFoundError, match="no such file or directory; allowed: null, last"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), ckpts)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match=r"no \*\.ckpt in"):
        resolve_ckpt_path(str(tmp_path / "empty"), ckpts)


def test_preserve_csv_log(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step\n0\n")
    assert preserve_csv_log(tmp_path) == tmp_path / "metrics.part0.csv"
    (tmp_path / "metrics.csv").write_text("step\n1\n")
    assert preserve_csv_log(tmp_path) == tmp_path / "metrics.part1.csv"
    assert preserve_csv_log(tmp_path) is None
    assert (tmp_path / "metrics.part0.csv").read_text() == "step\n0\n"


def test_redact_secrets() -> None:
    env = {
        "WANDB_API_KEY": "abcdefgh12345678",
        "HF_TOKEN": "hf_abcdefgh",
        "SHORT_TOKEN": "abc",
        "HOME": "/root",
    }
    flat = {
        "logger.wandb.api_key": "anything",
        "notes.hf_token": "hf_abcdefgh",
        "x.password": "p",
        "rollout.max_new_tokens": 24,
        "tags": ["a", "abcdefgh12345678"],
        "paths.root": "/root",
        "cmd": "--key=abcdefgh12345678",
        "none.token": None,
    }
    out = redact_secrets(flat, env)
    assert out["logger.wandb.api_key"] == out["notes.hf_token"] == out["x.password"] == out["cmd"] == REDACTED
    assert out["tags"] == ["a", REDACTED]
    assert out["rollout.max_new_tokens"] == 24 and out["paths.root"] == "/root" and out["none.token"] is None
    assert not is_secret_key("max_new_tokens") and is_secret_key("OPENAI_API_KEY") and is_secret_key("apikey")


def test_resume_continues_the_same_wandb_run_and_keeps_the_before_validation(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """A run resumed from its own directory writes to the W&B run id it had, not a new run, and reuses its
    validation before RL (val_before.json) instead of validating the warm start again."""
    from papo.pipeline import train
    from papo.utils.wandb_resume import previous_wandb_run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    common = ["logger=wandb", "validate_before=true", "validate_after=false", "masking=none", "loss=none"]
    train(make_cfg([*common, "trainer.max_steps=1"]))
    first = previous_wandb_run_id(tmp_path)
    assert first is not None
    before = json.loads((tmp_path / "val_before.json").read_text())
    assert "val/acc" in before
    before["val/acc"] = -1.0  # a sentinel: the resumed run must report it, not validate again
    (tmp_path / "val_before.json").write_text(json.dumps(before))
    train(make_cfg([*common, "trainer.max_steps=2", "ckpt_path=last"]))
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.endswith("-" + first) for r in runs), runs
    assert previous_wandb_run_id(tmp_path / "nowhere") is None
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["before"]["val/acc"] == -1.0 and final["rl_steps"] == 2
