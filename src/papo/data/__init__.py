"""papo.data: datasets (synthetic task, hub datasets), prompts, image decoding, masked views, datamodule.

- :mod:`papo.data.synthetic`  seeded procedural CLEVR-counting-like task (the embedded default)
- :mod:`papo.data.prompts`    the published prompt template (question, blank line, format instruction)
- :mod:`papo.data.images`     ``load_image``: any image representation -> RGB PIL, with context in errors
- :mod:`papo.data.masking`    masked views of raw images (PAPO's random patch mask and controls)
- :mod:`papo.data.datamodule` ``PapoDataModule``: batches of prompts + images + seeded masked views
"""

from papo.data.datamodule import EpochOrder, EpochShuffleSampler, PapoDataModule
from papo.data.images import ImageLoadError, load_image, load_images
from papo.data.masking import (
    VIEWS,
    BlankView,
    ExactRatioPatchMask,
    GaussianNoiseView,
    GridAlignedPatchMask,
    ImageView,
    RandomPatchMask,
    ShuffledImageView,
    random_patch_mask,
)
from papo.data.prompts import PROMPT_TEMPLATES, build_prompt
from papo.data.synthetic import (
    SyntheticTaskConfig,
    build_synthetic_split,
    reference_response,
    synthetic_corpus,
)

__all__ = [
    "PROMPT_TEMPLATES",
    "VIEWS",
    "BlankView",
    "EpochOrder",
    "EpochShuffleSampler",
    "ExactRatioPatchMask",
    "GaussianNoiseView",
    "GridAlignedPatchMask",
    "ImageLoadError",
    "ImageView",
    "PapoDataModule",
    "RandomPatchMask",
    "ShuffledImageView",
    "SyntheticTaskConfig",
    "build_prompt",
    "build_synthetic_split",
    "load_image",
    "load_images",
    "random_patch_mask",
    "reference_response",
    "synthetic_corpus",
]
