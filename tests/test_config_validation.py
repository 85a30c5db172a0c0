"""Config validation (papo.config_validation): every bad value of the reliability issue is a ONE-LINE
ConfigError naming the key and the allowed range or names, raised by ``validate_config`` (the pipeline's
first call, before any model loads). tests/test_configs.py covers a few keys and that every shipped config
passes; this module covers the whole list."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import compose_cfg
from papo.config_validation import ConfigError, validate_config

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
    ("rollout.decoder=fast", "rollout.decoder='fast' is unknown; valid: ['lean', 'generate']"),
    ("loss.components.perception_kl.kind=k9", "loss.components.perception_kl.kind='k9' is unknown"),
    ("loss.components.perception_kl.direction=up", "perception_kl.direction='up' is unknown; valid:"),
    ("loss.schedule=cosine", "loss.schedule='cosine' is unknown; valid: ['fixed', 'linear']"),
    ("masking._target_=papo.data.masking.Nope", "masking._target_='papo.data.masking.Nope' cannot be"),
    ("masking._target_=papo.data.masking.random_patch_mask", "is not an ImageView; valid masking views"),
    ("loss.components.perception_kl._target_=papo.losses.Nope", "cannot be imported; valid loss components"),
    ("loss.components.perception_kl._target_=builtins.dict", "is not a LossComponent subclass"),
    # coefficients
    ("loss.gamma=-0.1", "loss.gamma=-0.1 must be >= 0"),
    ("loss.eta_real=-1", "loss.eta_real=-1 must be >= 0"),
    ("loss.eta_masked=-0.03", "loss.eta_masked=-0.03 must be >= 0"),
    (
        "loss.components.perception_kl.gamma=-1",
        "loss.components.perception_kl.gamma=-1 must be a number >= 0",
    ),
    ("loss.anneal_fraction=0", "loss.anneal_fraction=0 must be a number in (0, 1]"),
    ("loss.components.perception_kl.top_fraction=1.5", "top_fraction=1.5 must be a number in (0, 1]"),
    ("loss.components.perception_kl.token_clip=0", "token_clip=0 must be a number > 0 or null"),
    ("algo.kl_coef=-0.01", "algo.kl_coef=-0.01 must be"),
    # mask probability / ratio
    ("masking.mask_prob=1.5", "masking.mask_prob=1.5 must be in [0, 1]"),
    ("masking.mask_prob=-0.1", "masking.mask_prob=-0.1 must be in [0, 1]"),
    ("masking=exact_ratio masking.ratio=2", "masking.ratio=2 must be in [0, 1]"),
    ("masking.patch_size=0", "masking.patch_size=0 must be an integer >= 1"),
    ("masking=noise masking.std=-1", "masking.std=-1 must be a number >= 0"),
    # group size with group-normalised advantages
    ("algo.group_size=1", "algo.group_size=1: group-normalised advantages need >= 2"),
    ("algo=rloo algo.group_size=1", "algo.group_size=1: group-normalised advantages need >= 2"),
    ("algo.group_size=0", "algo.group_size"),
    # clip values
    ("algo.clip_low=1.5", "algo.clip_low=1.5 must be in [0, 1)"),
    ("algo.clip_low=-0.1", "algo.clip_low=-0.1 must be in [0, 1)"),
    ("algo.clip_high=-0.2", "algo.clip_high=-0.2 must be >= 0"),
    ("algo.dual_clip=0.5", "algo.dual_clip=0.5 must be > 1 or null"),
    ("optim.grad_clip=0", "optim.grad_clip=0 must be > 0"),
    # max lengths and sizes
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens=0 must be > 0"),
    ("rollout.max_prompt_length=0", "rollout.max_prompt_length=0 must be > 0"),
    ("rollout.max_prompt_length=-5", "rollout.max_prompt_length=-5 must be > 0"),
    ("rollout.top_p=0", "rollout.top_p=0 must be in (0, 1]"),
    ("rollout.top_k=-1", "rollout.top_k=-1 must be an integer >= 0 (0 disables)"),
    ("rollout.temperature=-1", "rollout.temperature=-1 must be >= 0"),
    ("rollout.val_samples=0", "rollout.val_samples=0 must be >= 1"),
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
    ("optim.lr=0", "optim.lr=0 must be > 0"),
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
