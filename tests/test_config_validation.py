"""Config validation (papo.config_validation): every bad value of the reliability issue is a ONE-LINE
ConfigError naming the key and the allowed range or names, raised by ``validate_config`` (the pipeline's
first call, before any model loads). tests/test_configs.py covers a few keys and that every shipped config
passes; this module covers the whole list."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import compose_cfg
from papo.config_validation import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]

# (override, text the one-line error must contain: the key, and the allowed range / names)
BAD_VALUES = [
    # unknown registry names list the valid ones
    ("algo.advantage=nope", "algo.advantage='nope' is unknown; valid: ["),
    ("algo.policy_loss=nope", "algo.policy_loss='nope' is unknown; valid: ["),
    ("algo.kl_estimator=k9", "algo.kl_estimator='k9' is unknown; valid: ["),
    ("algo.agg_mode=mean", "algo.agg_mode='mean' is unknown; valid: ["),
    ("reward.name=nope", "reward.name='nope' is unknown; valid: ['math'"),
    ("reward.on_error=ignore", "reward.on_error='ignore' is unknown; valid: ['raise', 'zero']"),
    ("data.on_bad_row=drop", "data.on_bad_row='drop' is unknown; valid: ['error', 'skip']"),
    (
        "rollout.decoder=fast",
        "rollout.decoder='fast' is unknown; valid: ['auto', 'static', 'static_compiled', 'lean', 'generate']",
    ),
    ("loss.components.perception_kl.kind=k9", "loss.components.perception_kl.kind='k9' is unknown"),
    ("loss.components.perception_kl.direction=up", "perception_kl.direction='up' is unknown; valid:"),
    ("loss.schedule=cosine", "loss.schedule='cosine' is unknown; valid: ['fixed', 'linear']"),
    ("masking._target_=papo.data.masking.Nope", "masking._target_='papo.data.masking.Nope' cannot be"),
    ("masking._target_=papo.data.masking.random_patch_mask", "is not an ImageView; valid masking views"),
    ("loss.components.perception_kl._target_=papo.losses.Nope", "cannot be imported; valid loss components"),
    ("loss.components.perception_kl._target_=builtins.dict", "is not a LossComponent subclass"),
    # coefficients
    ("loss.gamma=-0.1", "loss.gamma=-0.1 must be a number >= 0"),
    ("loss.eta_real=-1", "loss.eta_real=-1 must be a number >= 0"),
    ("loss.eta_masked=-0.03", "loss.eta_masked=-0.03 must be a number >= 0"),
    (
        "loss.components.perception_kl.gamma=-1",
        "loss.components.perception_kl.gamma=-1 must be a number >= 0",
    ),
    ("loss.anneal_fraction=0", "loss.anneal_fraction=0 must be a number in (0, 1]"),
    ("loss.components.perception_kl.top_fraction=1.5", "top_fraction=1.5 must be a number in (0, 1]"),
    ("loss.components.perception_kl.token_clip=0", "token_clip=0 must be a number > 0 or null"),
    ("algo.kl_coef=-0.01", "algo.kl_coef=-0.01 must be"),
    # mask probability / ratio
    ("masking.mask_prob=1.5", "masking.mask_prob=1.5 must be a number in [0, 1]"),
    ("masking.mask_prob=-0.1", "masking.mask_prob=-0.1 must be a number in [0, 1]"),
    ("masking=exact_ratio masking.ratio=2", "masking.ratio=2 must be a number in [0, 1]"),
    ("masking.patch_size=0", "masking.patch_size=0 must be an integer >= 1"),
    ("masking=noise masking.std=-1", "masking.std=-1 must be a number >= 0"),
    # group size with group-normalised advantages
    ("algo.group_size=1", "algo.group_size=1: group-normalised advantages need >= 2"),
    ("algo=rloo algo.group_size=1", "algo.group_size=1: group-normalised advantages need >= 2"),
    ("algo.group_size=0", "algo.group_size"),
    # clip values
    ("algo.clip_low=1.5", "algo.clip_low=1.5 must be a number in [0, 1)"),
    ("algo.clip_low=-0.1", "algo.clip_low=-0.1 must be a number in [0, 1)"),
    ("algo.clip_high=-0.2", "algo.clip_high=-0.2 must be a number >= 0"),
    ("algo.dual_clip=0.5", "algo.dual_clip=0.5 must be a number > 1 or null (null disables)"),
    ("optim.grad_clip=0", "optim.grad_clip=0 must be a number > 0"),
    # max lengths and sizes
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens=0 must be an integer >= 1"),
    ("rollout.max_prompt_length=0", "rollout.max_prompt_length=0 must be an integer >= 1"),
    ("rollout.max_prompt_length=-5", "rollout.max_prompt_length=-5 must be an integer >= 1"),
    ("rollout.top_p=0", "rollout.top_p=0 must be a number in (0, 1]"),
    ("rollout.top_k=-1", "rollout.top_k=-1 must be an integer >= 0 (0 disables)"),
    ("rollout.temperature=-1", "rollout.temperature=-1 must be a number >= 0"),
    ("rollout.val_samples=0", "rollout.val_samples=0 must be an integer >= 1"),
    ("rollout.generation_batch_size=0", "rollout.generation_batch_size=0 must be an integer >= 1"),
    ("algo.overlong.enabled=true algo.overlong.buffer_length=100", "must be < rollout.max_new_tokens"),
    ("algo.dynamic_sampling.low=0.9 algo.dynamic_sampling.high=0.1", "need 0 <= low < high <= 1"),
    ("algo.dynamic_sampling.max_tries=0", "algo.dynamic_sampling.max_tries=0 must be an integer >= 1"),
    ("algo.ppo_epochs=0", "algo.ppo_epochs"),
    ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
    ("data.max_pixels=0", "data.max_pixels=0 must be an integer >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0 must be an integer >= 1"),
    # rewards, optimiser, checkpoints, warm start
    ("reward.format_weight=1.5", "reward.format_weight=1.5 must be a number in [0, 1]"),
    ("reward.timeout_s=0", "reward.timeout_s=0 must be a number > 0"),
    ("optim.lr=0", "optim.lr=0 must be a number > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1 must be a number >= 0"),
    ("optim.betas=[0.9,1.0]", "optim.betas.1=1.0 must be a number in [0, 1)"),
    ("optim.max_consecutive_skips=0", "optim.max_consecutive_skips=0 must be an integer >= 1 or null"),
    ("callbacks.model_checkpoint.every_n_train_steps=-1", "every_n_train_steps=-1 must be an integer >= 0"),
    ("warm_start.max_steps=0", "warm_start.max_steps=0 must be an integer >= 1"),
    ("warm_start.data_fraction=0", "warm_start.data_fraction=0 must be a number in (0, 1]"),
    # wrong types are range errors too, not TypeErrors deep inside
    ("rollout.top_k=1.5", "rollout.top_k=1.5 must be an integer >= 0"),
    ("reward.timeout_s=abc", "reward.timeout_s='abc' must be a number > 0"),
    # a loss component needing masked images with masking disabled
    (
        "masking=none",
        "loss.components.perception_kl, loss.components.double_entropy (loss=papo) needs masked",
    ),
    ("masking=none loss=double_entropy", "needs masked images but masking is disabled"),
    # values that passed validation and failed later (a NaN loss every step, a numpy error, a division by 0)
    ("rollout.temperature=0", "rollout.temperature=0 must be > 0: the log-prob passes of the update"),
    ("seed=-1", "seed=-1 must be an integer in [0, 4294967295]"),
    ("data_seed=4294967296", "data_seed=4294967296 must be an integer in [0, 4294967295]"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0 must be an integer >= 1, a fraction"),
    ("algo.num_minibatches=129", "algo.num_minibatches=129 must be <= the responses of an update batch (16"),
    (
        "algo=dapo algo.dynamic_sampling.batch_prompts=2 algo.num_minibatches=17",
        "algo.num_minibatches=17 must be <= the responses of an update batch (2 prompts",
    ),
]


_BASE: dict[tuple[str, ...], DictConfig] = {}


def _cfg(overrides: str) -> DictConfig:
    """Compose once per set of GROUP overrides (cached), then set the key=value ones (fast)."""
    parts = overrides.split()
    groups = tuple(p for p in parts if "." not in p.split("=")[0])
    if groups not in _BASE:
        _BASE[groups] = compose_cfg(list(groups))
    cfg = copy.deepcopy(_BASE[groups])
    with open_dict(cfg):
        for p in parts:
            key, value = p.split("=", 1)
            if "." in key:
                OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


@pytest.mark.parametrize(("overrides", "needle"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_a_one_line_error_naming_the_key(overrides: str, needle: str) -> None:
    cfg = _cfg(overrides)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert needle in message, message
    assert "\n" not in message


@pytest.mark.parametrize("overrides", [[], ["masking=none", "loss=none"], ["algo=dapo", "loss=papo_d"]])
def test_good_configs_pass(overrides: list[str]) -> None:
    validate_config(compose_cfg(overrides))


def test_unknown_group_options_list_the_valid_ones() -> None:
    """Unknown algorithm / loss / masking names are Hydra composition errors listing the options."""
    for group, valid in (("algo", "grpo"), ("loss", "papo_d"), ("masking", "random_patch")):
        with pytest.raises(MissingConfigException, match=rf"(?s)Could not find '{group}/nope'.*{valid}"):
            compose_cfg([f"{group}=nope"])


def test_validation_runs_before_any_model_loads(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """pipeline.train raises the ConfigError before it builds the datamodule or loads a model."""
    import papo.models.loading as loading
    from papo import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before validation")

    monkeypatch.setattr(loading, "load_policy", boom)
    monkeypatch.setattr(pipeline, "resolve_model_dir", boom)
    monkeypatch.setattr(pipeline, "instantiate_masking", boom)
    with pytest.raises(ConfigError, match=r"loss\.gamma=-1"):
        pipeline.train(make_cfg(["loss.gamma=-1"]))


def test_bad_ckpt_path_fails_before_any_model_loads(make_cfg, tmp_path: Path, monkeypatch) -> None:
    from papo import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the checkpoint path was checked")

    monkeypatch.setattr(pipeline, "resolve_model_dir", boom)
    monkeypatch.setattr(pipeline, "instantiate_masking", boom)
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no \*\.ckpt in .*hydra\.run\.dir="):
        pipeline.train(make_cfg(["ckpt_path=last"]))
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "nope.ckpt")
    with pytest.raises(ConfigError, match="no such file or directory; allowed: null, last"):
        pipeline.train(cfg)


# ------------------------------------------------------------------------- every problem at once, entry points
def test_every_problem_is_reported_at_once_one_line_per_key() -> None:
    """validate_config collects ALL problems (not just the first): one line per key, naming key and range;
    a key whose value is only copied elsewhere (loss.gamma -> the perception-KL component) is reported once."""
    cfg = _cfg("loss.gamma=-1 masking.mask_prob=2 algo.clip_low=1.5 optim.lr=abc rollout.top_k=-1")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.problems == [
        "algo.clip_low=1.5 must be a number in [0, 1)",
        "loss.gamma=-1 must be a number >= 0",
        "masking.mask_prob=2 must be a number in [0, 1]",
        "rollout.top_k=-1 must be an integer >= 0 (0 disables)",
        "optim.lr='abc' must be a number > 0",
    ]
    lines = str(err.value).splitlines()
    assert lines[0] == "5 config problems:" and lines[1:] == [f"  {p}" for p in err.value.problems]
    assert err.value.report().splitlines()[0] == "Invalid config (5 problems):"
    # one problem: the message is that one line
    with pytest.raises(ConfigError) as one:
        validate_config(_cfg("loss.gamma=-1"))
    assert str(one.value) == "loss.gamma=-1 must be a number >= 0" and one.value.problems == [str(one.value)]


def _entry_point(script: str, *overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *overrides, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_train_entry_point_prints_every_problem_without_traceback(tmp_path: Path) -> None:
    """`python src/train.py loss.gamma=-1 masking.mask_prob=2`: both keys on stderr, one line each, no
    traceback (neither task_wrapper's logged one nor Hydra's), exit status 2."""
    proc = _entry_point(
        "train.py", "loss.gamma=-1", "masking.mask_prob=2", "num_threads=1", tmp_path=tmp_path
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "Invalid config (2 problems):",
        "  loss.gamma=-1 must be a number >= 0",
        "  masking.mask_prob=2 must be a number in [0, 1]",
    ]


# (override, text of the one-line problem) for the evaluation config (configs/eval.yaml)
BAD_EVAL_VALUES = [
    ("eval.split=dev", "eval.split='dev' is unknown; valid: ['train', 'val', 'test']"),
    ("eval.samples=-1", "eval.samples=-1 must be an integer >= 0 (0 = greedy only)"),
    ("eval.samples=2.5", "eval.samples=2.5 must be an integer >= 0"),
    ("eval.temperature=0", "eval.temperature=0 must be a number > 0"),
    ("eval.top_p=0", "eval.top_p=0 must be a number in (0, 1]"),
    ("eval.top_k=-2", "eval.top_k=-2 must be an integer >= 0 (0 disables)"),
    ("eval.limit=0", "eval.limit=0 must be an integer >= 1 or null (null = all)"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0 must be an integer >= 1 or null"),
    ("eval.num_samples_shown=-1", "eval.num_samples_shown=-1 must be an integer >= 0"),
    (
        "eval.greedy=false eval.samples=0",
        "nothing to evaluate; set eval.greedy=true and/or eval.samples >= 1",
    ),
    ("masking.mask_prob=1.5", "masking.mask_prob=1.5 must be a number in [0, 1]"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens=0 must be an integer >= 1"),
    (
        "rollout.decoder=fast",
        "rollout.decoder='fast' is unknown; valid: ['auto', 'static', 'static_compiled', 'lean', 'generate']",
    ),
    ("reward.on_error=ignore", "reward.on_error='ignore' is unknown; valid: ['raise', 'zero']"),
    ("data.max_pixels=0", "data.max_pixels=0 must be an integer >= 1"),
    ("model.family=nope", "model.family='nope' is unknown; valid: ["),
    ("rollout.temperature=0", "rollout.temperature=0 must be > 0: the perception-KL passes (eval.kl_prcp"),
    ("seed=-1", "seed=-1 must be an integer in [0, 4294967295]"),
]


def _eval_cfg(overrides: str) -> DictConfig:
    cfg = compose_cfg([], config_name="eval")
    with open_dict(cfg):
        for p in overrides.split():
            key, value = p.split("=", 1)
            OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


@pytest.mark.parametrize(("overrides", "needle"), BAD_EVAL_VALUES, ids=[o for o, _ in BAD_EVAL_VALUES])
def test_bad_eval_value_is_a_one_line_error_naming_the_key(overrides: str, needle: str) -> None:
    from papo.config_validation import validate_eval_config

    with pytest.raises(ConfigError) as err:
        validate_eval_config(_eval_cfg(overrides))
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_eval_config_checks_only_what_the_evaluation_uses() -> None:
    """The shipped eval config passes; algo / loss / optim are composed for presets but not checked (the
    evaluation of a masking=none run must not fail on PAPO's need for masked images)."""
    from papo.config_validation import validate_eval_config

    validate_eval_config(compose_cfg([], config_name="eval"))
    validate_eval_config(compose_cfg(["masking=none", "eval.samples=0", "eval.limit=4"], config_name="eval"))
    validate_eval_config(_eval_cfg("algo.clip_low=5 loss.gamma=-1"))
    validate_eval_config(_eval_cfg("rollout.temperature=0 eval.kl_prcp=false"))  # no log-probs at T = 0


def test_eval_entry_point_validates_before_anything_loads(tmp_path: Path) -> None:
    """`python src/eval.py` with bad eval / masking values and a missing checkpoint: every problem on stderr
    at once, exit status 2, no traceback, and nothing was built (no model, no eval output)."""
    proc = _entry_point(
        "eval.py",
        "eval.limit=0",
        "eval.temperature=-1",
        "masking.mask_prob=2",
        "num_threads=1",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "Invalid config (3 problems):",
        "  eval.temperature=-1 must be a number > 0",
        "  eval.limit=0 must be an integer >= 1 or null (null = all)",
        "  masking.mask_prob=2 must be a number in [0, 1]",
    ]
    assert not list(tmp_path.glob("eval_*"))
    proc = _entry_point("eval.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", "num_threads=1", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("Invalid config: ckpt_path=") and "no such file or directory" in proc.stderr


def test_config_error_exit_raises_in_a_multirun(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A multirun job's ConfigError is raised (Hydra records the job, the sweep goes on), not sys.exit."""
    from papo.utils import wrappers

    with pytest.raises(SystemExit) as exit_, wrappers.config_error_exit():
        raise ConfigError(["a.b=1 must be >= 2", "c=x is unknown; valid: ['y']"])
    assert exit_.value.code == wrappers.CONFIG_ERROR_EXIT == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  a.b=1 must be >= 2",
        "  c=x is unknown; valid: ['y']",
    ]
    monkeypatch.setattr(wrappers, "multirun_job", lambda: {"num": "0"})
    with pytest.raises(ConfigError), wrappers.config_error_exit():
        raise ConfigError("a.b=1 must be >= 2")
