"""The published-recipe experiments compose to the papers' hyperparameters (docs/methods.md): the values the
method presets, the algo and the experiment set together, so a later defaults entry cannot silently undo one."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from papo.config import validate_config

VPPO_7B = {
    "model.path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "data.train_dataset.source": "chamber111/VPPO_ViRL39K_train",
    "masking._target_": "papo.data.masking.RandomPatchMask",
    "masking.mask_prob": 0.5,
    "masking.patch_size": 14,
    "sensitivity.kind": "k3",
    "token_selection.rule": "top_fraction_per_sequence",
    "token_selection.value": 0.4,
    "advantage_shaping._target_": "papo.blocks.shaping_vppo.VppoTrajectoryShaping",
    "advantage_shaping.beta_min": 0.9,
    "loss.components.entropy.form": "sampled",
    "loss.entropy_coef": 0.06,
    "algo.group_size": 8,
    "algo.clip_low": 0.2,
    "algo.clip_high": 0.28,
    "algo.dual_clip": 3.0,
    "algo.kl_coef": 0.0,
    "algo.dynamic_sampling.enabled": True,
    "algo.loss_normalizer": "global_token_mean",
    "optim.lr": 1.0e-6,
    "optim.weight_decay": 1.0e-2,
    "rollout.temperature": 1.0,
    "rollout.top_p": 0.99,
    "rollout.max_new_tokens": 2048,
    "reward.format_weight": 0.0,
    "data.prompt_template": "published",
    "model.freeze_vision_tower": False,
    "rollout_view._target_": "papo.blocks.base.RolloutView",
}
NOISYROLLOUT_GEO3K = {
    "model.path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "data.train_dataset.source": "xyliu6/geometry3k",
    "rollout_view._target_": "papo.blocks.rollout_view_noisy.NoisyRolloutView",
    "rollout_view.num_noisy": 6,
    "rollout_view.initial_step": 500,
    "rollout_view.decay": "sigmoid",
    "rollout_view.coef": 30.0,
    "rollout_view.mid_step": 40.0,
    "loss.components.entropy.form": "full",
    "loss.entropy_coef": -1.0e-3,
    "algo.group_size": 12,
    "algo.clip_low": 0.2,
    "algo.clip_high": 0.2,
    "algo.dual_clip": None,
    "algo.kl_coef": 0.0,
    "algo.dynamic_sampling.enabled": False,
    "algo.num_minibatches": 4,
    "optim.lr": 1.0e-6,
    "optim.weight_decay": 1.0e-2,
    "rollout.temperature": 1.0,
    "rollout.max_new_tokens": 2048,
    "reward.format_weight": 0.1,
    "data.prompt_template": "easyr1_math",
    "model.freeze_vision_tower": True,
    "model.min_pixels": 262144,
    "model.max_pixels": 1000000,
    "trainer.max_steps": 240,
    "sensitivity._target_": None,
    "token_selection._target_": None,
    "advantage_shaping._target_": None,
}


@pytest.mark.parametrize(
    ("experiment", "expected"), [("vppo_7b", VPPO_7B), ("noisyrollout_7b_geo3k", NOISYROLLOUT_GEO3K)]
)
def test_published_recipe(experiment: str, expected: dict) -> None:
    cfg = compose_cfg([f"experiment={experiment}"])
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    validate_config(cfg)
    # the data-parallel batch: 384 prompts (VPPO's rounds of 128) / 512 prompts in all ranks
    per_rank, ranks = cfg.data.batch_size, cfg.trainer.devices * cfg.trainer.num_nodes
    assert per_rank * ranks == (128 if experiment == "vppo_7b" else 512)
