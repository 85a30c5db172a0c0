"""Every config in configs/ composes (alone, as the one option of its group), and the composed
train config passes validation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict, read_write

from conftest import CONFIG_DIR, compose_cfg
from papo.config_validation import ConfigError, validate_config

GROUPS = [
    "model",
    "data",
    "masking",
    "algo",
    "loss",
    "sensitivity",
    "token_selection",
    "advantage_shaping",
    "rollout_view",
    "method",
    "reward",
    "rollout",
    "trainer",
    "logger",
    "callbacks",
    "warm_start",
    "debug",
    "experiment",
]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in _options(g)]
#: options that need an optional extra; without it they compose but fail validation with the install hint
OPTIONAL_PACKAGES = {
    ("rollout", "vllm"): "vllm",
    ("trainer", "deepspeed_zero2"): "deepspeed",
    ("trainer", "deepspeed_zero3"): "deepspeed",
}

#: options that name a user reward function the user must give (configs/reward/custom.yaml, combined.yaml)
REQUIRED_USER_FUNCTION = {
    ("reward", "custom"): r"reward\.fn is required",
    ("reward", "combined"): r"reward\.components\.custom\.fn is required",
}


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_config_composes(group: str, option: str) -> None:
    extra = ["loss=none"] if (group, option) == ("masking", "none") else []  # PAPO needs a masked view
    if group in ("token_selection", "advantage_shaping") and option != "none":
        extra.append("sensitivity=k3")  # a shaper needs a visual-sensitivity signal
    cfg = compose_cfg([f"{group}={option}", *extra])
    with open_dict(cfg):
        cfg.pop("hydra")  # Hydra's own node has job-time-only values
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["algo"]["name"]
    package = OPTIONAL_PACKAGES.get((group, option))
    if package and importlib.util.find_spec(package) is None:  # composes; validation names the install
        with pytest.raises(ConfigError, match=rf"pip install 'papo\[{package}\]'"):
            validate_config(cfg)
        return
    if (group, option) == ("data", "local_files"):  # composes; its source is required before anything loads
        with pytest.raises(ConfigError, match=r"data\.train_dataset\.source is required"):
            validate_config(cfg)
        return
    if (group, option) in REQUIRED_USER_FUNCTION:  # composes; the user's reward function is required
        with pytest.raises(ConfigError, match=REQUIRED_USER_FUNCTION[(group, option)]):
            validate_config(cfg)
        return
    validate_config(cfg)


def test_papo_defaults_follow_the_algo() -> None:
    g = compose_cfg(["loss=papo", "algo=grpo"])
    d = compose_cfg(["loss=papo", "algo=dapo"])
    assert (g.loss.gamma, g.loss.eta_real) == (0.02, 0.0)  # PAPO-G 3B
    assert (d.loss.gamma, d.loss.eta_real, d.loss.eta_masked) == (0.01, 0.03, 0.03)  # PAPO-D
    assert d.loss.components.perception_kl.gamma == 0.01  # the component sees the same value
    assert compose_cfg(["loss=papo", "loss.gamma=0.005"]).loss.components.perception_kl.gamma == 0.005


def test_control_configs_switch_the_masking_view() -> None:
    assert compose_cfg(["loss=control_shuffled"]).masking._target_.endswith("ShuffledImageView")
    assert compose_cfg(["loss=control_noise"]).masking._target_.endswith("GaussianNoiseView")
    assert compose_cfg(["loss=control_blank"]).masking._target_.endswith("BlankView")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("algo.advantage=nope", "algo.advantage"),
        ("algo.agg_mode=mean", "algo.agg_mode"),
        ("algo.group_size=1", "group_size"),
        ("algo.clip_low=1.5", "algo.clip_low"),
        ("loss.gamma=-0.1", "loss.gamma"),
        ("masking.mask_prob=1.5", "masking.mask_prob"),
        ("rollout.max_new_tokens=0", "rollout.max_new_tokens"),
        ("masking=none", "needs masked images"),  # loss=papo (default) with masking disabled
    ],
)
def test_bad_values_fail_with_the_key_named(override: str, needle: str) -> None:
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate_config(cfg)


def test_the_paper_protocol_is_one_definition() -> None:
    """avg@8 at T = 1.0 with plain sampling (docs/algorithm.md "Evaluation"): in-run ``rollout.val_sampled_k=8``
    (val/sampled/*, top_p 1.0 in the module) and ``src/eval.py``'s default use the same temperature, top_p and k.
    The experiments' in-run ``val/acc`` is the released runs' validation: 8 samples at T = 1.0 with the training
    top_p (0.99), a separate protocol."""
    train = compose_cfg(["experiment=papo_g_3b", "rollout.val_sampled_k=8"])
    ev = compose_cfg(config_name="eval").eval
    assert train.rollout.val_sampled_temperature == ev.temperature == 1.0
    assert (ev.samples, ev.top_p, ev.top_k) == (8, 1.0, 0)
    assert (train.rollout.val_temperature, train.rollout.val_samples, train.rollout.top_p) == (1.0, 8, 0.99)


@pytest.mark.parametrize("preset", ["default", "fdr"])
def test_debug_presets_log_nothing_and_save_no_checkpoint(preset: str, tmp_path: Path) -> None:
    """``debug=fdr`` is "one step on tiny data, no logging": the trainer it builds has no logger and no
    checkpoint callback (not even Lightning's implicit one)."""
    import hydra

    from papo.pipeline import instantiate_list

    cfg = compose_cfg([f"debug={preset}"])
    assert not instantiate_list(cfg.get("logger")) and "model_checkpoint" not in (cfg.get("callbacks") or {})
    with open_dict(cfg):
        cfg.trainer.default_root_dir = str(tmp_path)
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))  # as papo.pipeline.train builds the trainer
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert trainer.loggers == [] and trainer.checkpoint_callbacks == []
    assert cfg.trainer.max_steps == (1 if preset == "fdr" else 3)
    validate_config(cfg)


def test_wandb_run_names_differ_between_the_jobs_of_a_multirun() -> None:
    """``-m loss.gamma=0.005,0.01,0.02``: the three jobs share algo, loss and seed, so the W&B run name carries
    the Hydra job number in a multirun (and nothing in a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = compose_cfg(["logger=wandb"])
    assert cfg.logger.wandb.name == "grpo-papo-seed42"  # a single run: no suffix
    names = []
    for num, gamma in enumerate(["0.005", "0.01", "0.02"]):
        cfg = compose_cfg(["logger=wandb", f"loss.gamma={gamma}"])
        with (
            read_write(cfg.hydra),
            open_dict(cfg.hydra),
        ):  # what Hydra's launcher sets for each job of a multirun
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        names.append(cfg.logger.wandb.name)
    assert names == ["grpo-papo-seed42-job0", "grpo-papo-seed42-job1", "grpo-papo-seed42-job2"]
    assert {cfg.logger.wandb.group} == {"grpo-papo"}
