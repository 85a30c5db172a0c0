"""Rewards from config (papo.rewards.components, papo.rewards.user_function): user functions by file path and
by module path, weighted components with their own names, row fields, deadlines, error policy, and the
one-line config errors. The reward files are tests/data/user_rewards.py and tests/data/user_rewards_broken.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from papo.rewards import (
    build_reward_fn,
    grading_worker,
    reward_config_problems,
    row_fields,
    score_batch,
    score_response,
)
from papo.rewards.components import CombinedReward, RewardComponentError
from papo.rewards.format import format_reward
from papo.rewards.user_function import RewardFunctionError, as_scores, load_function, signature_problems

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
USER = f"{DATA}/user_rewards.py"
GOOD = "<think>2+2</think> The answer is \\boxed{4}."
MATH = {"name": "math", "format_weight": 0.1, "timeout_s": 10.0, "on_error": "raise"}


def _cfg(**kwargs) -> dict:
    return {**MATH, "fn": None, "images": False, "kwargs": {}, "components": {}, **kwargs}


# ------------------------------------------------------------------------------------------------- loading
def test_load_by_file_path_absolute_and_relative(monkeypatch):
    assert load_function(f"{USER}:exact_match")("4", "4") == 1.0
    monkeypatch.chdir(ROOT)
    assert load_function("tests/data/user_rewards.py:exact_match")(" 4 ", "4") == 1.0


def test_load_by_module_path(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))
    assert load_function("user_rewards:brevity")("12345", "x") == {"overall": 0.5, "chars": 5.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests/data/nope.py:f", "no such file: "),
        (f"{USER}:nope", "has no function 'nope'; functions defined there: ["),
        (f"{USER}:not_callable", "'not_callable' in "),
        (f"{DATA}/user_rewards_broken.py:f", "raised ImportError: this reward file needs a package"),
        (
            "no_such_package_xyz.rewards:f",
            "cannot import module 'no_such_package_xyz.rewards': ModuleNotFound",
        ),
        ("exact_match", "is not 'path/to/file.py:function' or 'package.module:function'"),
        (f"{USER}:", "is not 'path/to/file.py:function' or 'package.module:function'"),
    ],
)
def test_load_errors_are_one_line(spec, message):
    with pytest.raises(RewardFunctionError) as err:
        load_function(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_function_lists_the_functions_of_the_file():
    with pytest.raises(RewardFunctionError) as err:
        load_function(f"{USER}:exact")
    assert "'brevity'" in str(err.value) and "'exact_match'" in str(err.value)


# ---------------------------------------------------------------------------------------------- signature
FIELDS = ("question", "prompt", "uid", "task_type", "vision_dependency")


def _sig(name: str, kwargs=(), images=False) -> list[str]:
    return signature_problems(load_function(f"{USER}:{name}"), FIELDS, kwargs, images)


def test_signature_problems():
    for ok in ("exact_match", "brevity", "sees_row", "sees_everything"):
        assert _sig(ok) == []
    assert _sig("image_pixels", images=True) == [] and _sig("scaled", kwargs=["factor"]) == []
    assert _sig("one_arg") == [
        "takes 1 positional parameter(s); a reward function is called as fn(response, ground_truth, **fields)"
    ]
    assert _sig("needs_level")[0].startswith("parameter 'level' has no value: row fields are [")
    assert _sig("image_pixels") == [
        "parameter 'images' is required but images are not passed: set images: true"
    ]
    assert _sig("exact_match", kwargs=["factor"])[0].startswith("does not accept the config kwarg 'factor'")
    assert _sig("sees_everything", kwargs=["factor"]) == []  # **fields takes it


# ------------------------------------------------------------------------------------------ return values
def test_as_scores():
    assert as_scores(1) == {"overall": 1.0} and as_scores(True) == {"overall": 1.0}
    assert as_scores({"overall": 0.5, "x": 2}) == {"overall": 0.5, "x": 2.0}
    with pytest.raises(TypeError, match=r"returned str 'high'; a reward function returns a number or a dict"):
        as_scores("high")
    with pytest.raises(TypeError, match=r"without an 'overall' entry \(keys \['score'\]\)"):
        as_scores({"score": 1.0})
    with pytest.raises(TypeError, match=r"entry 'overall' is str 'a'"):
        as_scores({"overall": "a"})
    with pytest.raises(TypeError, match="returned NoneType None"):
        as_scores(None)


# ------------------------------------------------------------------------------------------- combination
def test_default_config_is_the_math_reward_unchanged():
    fn = build_reward_fn(_cfg())
    for response, truth in [(GOOD, "4"), (GOOD, "5"), ("\\boxed{4}", "4"), ("no box", "4")]:
        expected = score_response(response, truth)
        got = fn(response, truth, question="q")
        assert {k: got[k] for k in ("overall", "accuracy", "format")} == expected
        assert got["math"] == expected["overall"] and got["math/format"] == expected["format"]


def test_weighted_components_each_under_its_name():
    cfg = _cfg(
        components={
            "math": {"fn": "math", "weight": 1.0},
            "short": {"fn": f"{USER}:brevity", "weight": 0.5, "kwargs": {"max_chars": 100}},
        }
    )
    fn = build_reward_fn(cfg)
    assert isinstance(fn, CombinedReward) and fn.names == ["math", "short"]
    scores = fn(GOOD, "4")
    brevity = 1.0 - len(GOOD) / 100
    # hand-computed: 1.0 * (0.9 * 1 + 0.1 * 1) + 0.5 * (1 - 43 / 100)
    assert scores["overall"] == pytest.approx(1.0 + 0.5 * brevity)
    assert scores["short"] == pytest.approx(brevity) and scores["short/chars"] == len(GOOD)
    assert scores["accuracy"] == 1.0 and scores["format"] == 1.0  # from math, the first reporting them
    assert set(scores) == {
        "overall",
        "accuracy",
        "format",
        "math",
        "math/accuracy",
        "math/format",
        "short",
        "short/chars",
    }


def test_accuracy_and_format_from_the_first_component_reporting_them():
    cfg = _cfg(components={"g": {"fn": f"{USER}:graded", "weight": 2.0}, "m": {"fn": "math"}})
    scores = build_reward_fn(cfg)("x", "x")
    assert scores["overall"] == pytest.approx(2.0 * 0.5 + 0.0)  # math: no box, no format
    assert scores["accuracy"] == 1.0 and scores["format"] == 0.25


def test_user_function_alone_accuracy_is_overall_and_format_the_builtin_check():
    fn = build_reward_fn(_cfg(fn=f"{USER}:exact_match"))
    assert fn.names == ["exact_match"]
    assert fn("4", "4") == {"overall": 1.0, "accuracy": 1.0, "format": format_reward("4"), "exact_match": 1.0}
    assert fn(GOOD, "5")["format"] == 1.0 and fn(GOOD, "5")["accuracy"] == 0.0


# -------------------------------------------------------------------------------------------- row fields
def _batch():
    images = [[Image.new("RGB", (4, 2))], [Image.new("RGB", (3, 3)), Image.new("RGB", (1, 2))]]
    return {
        "uid": ["7", "9"],
        "problem": ["How many?", "What colour is it?"],
        "prompt": ["<t>How many?", "<t>What colour is it?"],
        "images": images,
        "images_masked": None,
        "answer": ["4", "red"],
        "task_type": ["count", "color"],
        "vision_dependency": ["high", "low"],
    }


def test_row_fields_question_and_metadata_by_name():
    batch, rows = _batch(), [0, 0, 1]
    fields = row_fields(batch, rows)
    assert fields[2]["question"] == "What colour is it?" and fields[2]["uid"] == "9"
    assert "answer" not in fields[0] and "problem" not in fields[0] and "images_masked" not in fields[0]
    fn = build_reward_fn(_cfg(fn=f"{USER}:sees_row"))
    answers = [batch["answer"][i] for i in rows]
    scores, n_err = score_batch(["a", "b", "c"], answers, fn, fields=fields)
    assert n_err == 0 and scores["overall"] == [7.0, 7.0, 9.0]
    assert scores["sees_row/question_chars"] == [9.0, 9.0, 18.0]
    assert scores["sees_row/is_count"] == [1.0, 1.0, 0.0]


def test_images_only_when_the_config_asks():
    batch = _batch()
    fields = row_fields(batch, [0, 1])
    without = build_reward_fn(_cfg(fn=f"{USER}:sees_everything"))
    scores, _ = score_batch(["a", "b"], batch["answer"], without, fields=fields)
    assert scores["sees_everything/has_images"] == [0.0, 0.0]
    assert scores["overall"] == [5.0, 5.0]  # question, prompt, uid, task_type, vision_dependency
    pixels = build_reward_fn(_cfg(fn=f"{USER}:image_pixels", images=True))
    scores, _ = score_batch(["a", "b"], batch["answer"], pixels, fields=fields)
    assert scores["overall"] == [8.0, 11.0]


# ----------------------------------------------------------------------------------- deadline and errors
def test_user_function_stopped_at_its_deadline_and_on_error():
    fn = build_reward_fn(_cfg(fn=f"{USER}:sleeps", timeout_s=0.5))
    before = grading_worker.stats("user_reward").timeouts
    t0 = time.perf_counter()
    with pytest.raises(
        RuntimeError, match=r"item 0: RewardComponentError: reward component 'sleeps' .* 0.5 s deadline"
    ):
        score_batch(["a"], ["1"], fn)
    scores, n_err = score_batch(["a", "b"], ["1", "2"], fn, on_error="zero")
    assert time.perf_counter() - t0 < 10.0  # three deadlines of 0.5 s, not 60 s sleeps
    assert n_err == 2 and scores["overall"] == [0.0, 0.0]
    assert grading_worker.stats("user_reward").timeouts == before + 3
    assert build_reward_fn(_cfg(fn=f"{USER}:exact_match"))("1", "1")["overall"] == 1.0  # a fresh worker


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("raises", "ValueError: reward service down"),
        ("returns_text", "TypeError: returned str 'high'"),
        ("returns_no_overall", "TypeError: returned a dict without an 'overall' entry"),
        ("returns_nan", "returned non-finite score"),
    ],
)
def test_user_function_failures_follow_on_error(name, message):
    fn = build_reward_fn(_cfg(fn=f"{USER}:{name}"))
    with pytest.raises(RuntimeError) as err:
        score_batch(["ok", "boom"], ["1", "2"], fn, on_error="raise")
    assert f"reward function failed on item 0: RewardComponentError: reward component {name!r}" in str(
        err.value
    )
    assert message in str(err.value)
    assert isinstance(err.value.__cause__, RewardComponentError)
    scores, n_err = score_batch(["ok", "boom"], ["1", "2"], fn, on_error="zero")
    assert n_err == 2 and scores["overall"] == [0.0, 0.0]


def test_in_process_mode_runs_user_functions_here():
    """grading_worker.in_process() (debugging, spies) runs user functions in this process, without a deadline."""
    with grading_worker.in_process():
        assert build_reward_fn(_cfg(fn=f"{USER}:exact_match"))("1", "1")["overall"] == 1.0
        with pytest.raises(RewardComponentError, match="ValueError: reward service down"):
            build_reward_fn(_cfg(fn=f"{USER}:raises"))("1", "1")


# ------------------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    ("cfg", "problem"),
    [
        (_cfg(name="maths"), "reward.name='maths' is unknown; valid: ['math'"),
        (_cfg(fn="???"), "reward.fn is required with reward=custom: 'path/to/file.py:function' or"),
        (_cfg(fn="tests/data/nope.py:f"), "reward.fn='tests/data/nope.py:f': no such file: "),
        (_cfg(fn=f"{USER}:nope"), f"reward.fn='{USER}:nope': {USER} has no function 'nope'"),
        (_cfg(fn=f"{USER}:one_arg"), f"reward.fn='{USER}:one_arg' takes 1 positional parameter(s)"),
        (_cfg(fn=f"{USER}:image_pixels"), "parameter 'images' is required but images are not passed"),
        (_cfg(fn=f"{USER}:exact_match", kwargs={"factor": 2}), "does not accept the config kwarg 'factor'"),
        (_cfg(fn=f"{USER}:exact_match", components={"m": {"fn": "math"}}), "reward.fn and reward.components"),
        (_cfg(components={"m": {"fn": "mathz"}}), "reward.components.m.fn='mathz' is unknown; valid:"),
        (_cfg(components={"m": {"fn": "???"}}), "reward.components.m.fn is required: a registered reward"),
        (
            _cfg(components={"m": {"fn": "math", "weight": "a"}}),
            "reward.components.m.weight='a' must be a number",
        ),
        (
            _cfg(components={"m": {"fn": "math", "timeout_s": 0}}),
            "reward.components.m.timeout_s=0 must be a number > 0",
        ),
        (
            _cfg(components={"m": {"fn": "math", "wieght": 1}}),
            "reward.components.m has unknown keys ['wieght']",
        ),
        (
            _cfg(components={"format": {"fn": "math"}}),
            "reward.components.format: the name 'format' is reserved",
        ),
        (_cfg(components={"c": {"fn": f"{USER}:needs_level"}}), "reward.components.c.fn='"),
    ],
)
def test_config_problems_one_line_each(cfg, problem):
    problems = reward_config_problems(cfg)
    assert problems and problem in problems[0], problems
    assert all("\n" not in p for p in problems)


def test_valid_configs_have_no_problems():
    assert reward_config_problems(_cfg()) == []
    assert reward_config_problems(_cfg(fn=f"{USER}:image_pixels", images=True)) == []
    assert reward_config_problems(_cfg(fn=f"{USER}:scaled", kwargs={"factor": 2})) == []
    comps = {
        "math": {"fn": "math", "weight": 1.0},
        "c": {"fn": f"{USER}:brevity", "weight": 0.1, "timeout_s": None},
    }
    assert reward_config_problems(_cfg(components=comps)) == []


def test_config_groups_compose_and_build():
    from conftest import compose_cfg

    cfg = compose_cfg(["reward=custom", f"reward.fn={USER}:exact_match"])
    assert build_reward_fn(cfg.reward).names == ["exact_match"]
    cfg = compose_cfg(["reward=combined", f"reward.components.custom.fn={USER}:brevity"])
    assert reward_config_problems(cfg.reward) == []
    fn = build_reward_fn(cfg.reward)
    assert fn.names == ["math", "custom"] and [c.weight for c in fn.components] == [1.0, 0.1]
    assert reward_config_problems(compose_cfg(["reward=custom"]).reward) == [
        "reward.fn is required with reward=custom: 'path/to/file.py:function' or 'package.module:function'"
    ]


def test_train_entry_point_exits_2_with_one_line(tmp_path):
    """python src/train.py reward=custom reward.fn=<missing file>: one line on stderr, exit 2, no model loaded."""
    proc = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "reward=custom",
            "reward.fn=tests/data/nope.py:score",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "reward.fn" in line]
    assert lines == [
        f"Invalid config: reward.fn='tests/data/nope.py:score': no such file: {ROOT}/tests/data/nope.py"
    ]
    assert "Traceback" not in proc.stderr


def test_importing_the_package_leaves_torch_out_of_the_workers():
    """The grading and user-reward workers import papo.rewards: it must not pull torch in."""
    code = "import sys, papo.rewards.grading, papo.rewards.user_function; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_training_logs_each_named_reward(make_cfg, tmp_path: Path) -> None:
    """reward=combined (math + a user function from tests/data) through the real pipeline: each component is
    logged as train/reward/<name> and val/reward/<name>, and the optimised reward is their weighted sum."""
    import csv

    from papo.pipeline import train

    cfg = make_cfg(
        [
            "reward=combined",
            f"reward.components.custom.fn={USER}:brevity",
            "reward.components.custom.weight=0.5",
            "+reward.components.custom.kwargs.max_chars=1000",
            "logger=csv",
            "trainer.max_steps=2",
        ]
    )
    train(cfg)
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = {k for r in rows for k, v in r.items() if v not in ("", None)}
    for key in (
        "train/reward/math",
        "train/reward/custom",
        "train/reward/custom/chars",
        "train/reward/math/format",
    ):
        assert key in keys, sorted(k for k in keys if "reward" in k)
    for key in ("val/reward/math", "val/reward/custom", "val/reward_masked/custom"):
        assert key in keys, sorted(k for k in keys if "reward" in k)
    steps = [r for r in rows if r.get("train/reward/custom") not in ("", None)]
    assert len(steps) == 2
    for r in steps:
        combined = float(r["train/reward/math"]) + 0.5 * float(r["train/reward/custom"])
        assert float(r["train/reward/mean"]) == pytest.approx(combined, abs=1e-6)
        assert 0.0 < float(r["train/reward/custom"]) <= 1.0 and float(r["train/reward/custom/chars"]) > 0


def test_combined_reward_pickles_with_user_functions():
    """Held by spec, a user function travels to spawned processes (e.g. a spawn-launched rank)."""
    import pickle

    fn = build_reward_fn(_cfg(components={"m": {"fn": "math"}, "u": {"fn": f"{USER}:exact_match"}}))
    code = "import pickle, sys; fn = pickle.loads(sys.stdin.buffer.read()); print(fn('4', '4')['overall'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(fn),
        capture_output=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert float(out.stdout) == fn("4", "4")["overall"] == 1.0  # math 0 (no box) + exact_match 1
