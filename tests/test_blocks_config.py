"""The method-block groups are validated before anything loads (papo.config.blocks, the run config's rules):
each bad value or impossible combination is one error line naming the key and what is allowed."""

from __future__ import annotations

import pytest

from conftest import compose_cfg
from papo.config import ConfigError, validate_config


@pytest.mark.parametrize("method", ["papo", "vppo", "noisyrollout", "grpo"])
def test_every_method_preset_validates(method: str) -> None:
    run = validate_config(compose_cfg([f"method={method}"]))
    assert run.rollout_view is not None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["token_selection=top_fraction_per_sequence"],
            r"token_selection need a visual-sensitivity signal.*sensitivity=k3",
        ),
        (["method=vppo", "masking=none", "loss=none"], r"masking is disabled"),
        (["sensitivity=k3", "sensitivity.kind=k9"], r"sensitivity\.kind='k9' is unknown"),
        (
            ["method=vppo", "token_selection.value=1.5"],
            r"token_selection\.value=1\.5 must be a fraction in \(0, 1\]",
        ),
        (["method=vppo", "advantage_shaping.beta_min=1.5"], r"advantage_shaping\.beta_min=1\.5"),
        (
            ["method=noisyrollout", "rollout_view.num_noisy=8"],
            r"rollout_view\.num_noisy=8 must be below algo\.group_size=8",
        ),
        (["method=noisyrollout", "rollout_view.decay=cosine"], r"rollout_view\.decay='cosine' is unknown"),
        (["method=noisyrollout", "rollout_view.initial_step=1000"], r"rollout_view\.initial_step=1000"),
        (
            ["sensitivity=k3", "sensitivity._target_=papo.losses.entropy.EntropyLoss"],
            r"is not a SensitivitySignal; built-in: \[.*SampledTokenSensitivity",
        ),
    ],
)
def test_bad_block_values_fail_with_the_key_named(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate_config(compose_cfg(overrides))


def test_the_built_in_block_lists_name_importable_classes_of_their_group() -> None:
    from hydra.utils import get_class

    import papo.blocks.base as base
    from papo.config.blocks import BUILTIN_BLOCKS

    kinds = {
        "sensitivity": base.SensitivitySignal,
        "token_selection": base.TokenSelector,
        "advantage_shaping": base.AdvantageShaper,
        "rollout_view": base.RolloutView,
    }
    for group, targets in BUILTIN_BLOCKS.items():
        assert all(issubclass(get_class(t), kinds[group]) for t in targets), group
