"""Building blocks of perception-aware RLVR methods, each a Hydra group with one file per variant.

A perception-aware method (PAPO, VPPO, NoisyRollout, ...) is a choice of blocks (docs/methods.md):

============================  ==========================  ==================================================
block                         config group                component (this package unless named)
============================  ==========================  ==================================================
view (altered image)          ``configs/masking``         :mod:`papo.data.masking` (made per prompt by the
                                                          datamodule)
visual-sensitivity signal     ``configs/sensitivity``     :mod:`papo.blocks.sensitivity_sampled`,
                                                          :mod:`papo.blocks.sensitivity_distribution`
token selection               ``configs/token_selection`` :class:`~papo.blocks.token_selection.TokenSelection`
advantage shaping             ``configs/advantage_shaping`` :mod:`papo.blocks.shaping_vppo`,
                                                          :mod:`papo.blocks.shaping_fixed_range`
rollout-side view             ``configs/rollout_view``    :class:`~papo.blocks.rollout_view_noisy.NoisyRolloutView`
loss components               ``configs/loss``            :mod:`papo.losses`
============================  ==========================  ==================================================

The interfaces are in :mod:`papo.blocks.base`; the maths of every block is a pure function in
:mod:`papo.algos` (tested against hand-computed values), the classes here only bind hyperparameters and
say what model outputs they need. ``configs/method/<name>.yaml`` presets pick one option of every group.
"""

from papo.blocks.base import (
    AdvantageShaper,
    RolloutView,
    SensitivitySignal,
    ShapingInputs,
    TokenSelector,
)

__all__ = ["AdvantageShaper", "RolloutView", "SensitivitySignal", "ShapingInputs", "TokenSelector"]
