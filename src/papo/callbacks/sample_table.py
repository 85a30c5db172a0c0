"""Sample generations at each validation: question, real and masked image, answer, response, reward.

With a ``WandbLogger`` attached: a W&B table ``val/samples`` (text columns, and ``wandb.Image`` for both
views) and the same images as their own media keys ``val/samples/images`` and ``val/samples/images_masked``
(one image per sample, captioned with the sample's row of the table). The media keys are what keeps the
images of an OFFLINE run: W&B writes images inside a table as the word "Image" without keeping the file
unless the run is online, while media keys are written to ``files/media/images/`` and uploaded by a later
``wandb sync``. Files (``write_files``: ``auto`` = only without W&B, or
true / false): ``<dirpath>/step<N>.md`` with the images as PNGs under ``<dirpath>/images/`` and
``step<N>.csv``. The samples are the first response of the first ``num_samples`` prompts of the first
val batch, read from what ``PapoModule.validation_step`` returns for it
(:class:`papo.evaluation.validation.ValidationOutput`: the real- and masked-image generations).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from papo.evaluation.samples import SAMPLE_COLUMNS, collect_samples, write_samples

log = logging.getLogger(__name__)


def wandb_sample_table(samples: list[dict[str, Any]]) -> Any:
    """A ``wandb.Table`` with the text columns plus ``image`` and ``image_masked`` (``wandb.Image``)."""
    import wandb

    columns = ["image", "image_masked", *SAMPLE_COLUMNS]
    table = wandb.Table(columns=columns)
    for s in samples:
        real = s.get("images") or []
        masked = s.get("images_masked") or []
        table.add_data(
            wandb.Image(real[0]) if real else None,
            wandb.Image(masked[0]) if masked else None,
            *[s.get(c) for c in SAMPLE_COLUMNS],
        )
    return table


def wandb_sample_images(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """``{"images": [wandb.Image], "images_masked": [...]}``: the first image of each sample, captioned
    ``"<k>: <uid>"`` (k = the sample's row in the table); a key is absent when no sample has that view."""
    import wandb

    out: dict[str, list[Any]] = {}
    for field in ("images", "images_masked"):
        media = [
            wandb.Image(s[field][0], caption=f"{k}: {s.get('uid')}")
            for k, s in enumerate(samples)
            if s.get(field)
        ]
        if media:
            out[field] = media
    return out


class SampleTableCallback(Callback):
    """Log / write the kept validation samples after each validation run (see module docstring).

    Args:
        num_samples: prompts to show (the module keeps this many from the first val batch; 0 disables).
        dirpath: folder for the Markdown/CSV files (None: ``<default_root_dir>/val_samples``).
        write_files: ``"auto"`` (only when no WandbLogger is attached), True or False.
        key: W&B key of the table.
    """

    def __init__(
        self,
        num_samples: int = 8,
        dirpath: str | None = None,
        write_files: bool | str = "auto",
        key: str = "val/samples",
    ) -> None:
        super().__init__()
        if write_files not in ("auto", True, False):
            raise ValueError(f"sample_table.write_files must be auto, true or false, got {write_files!r}")
        self.num_samples = int(num_samples)
        self.dirpath = dirpath
        self.write_files = write_files
        self.key = key
        self.samples: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the first ``num_samples`` prompts of the first val batch: each prompt's first response with the
        real image and, when there is a masked view, with the masked one (``outputs``: a ValidationOutput)."""
        if batch_idx != 0 or self.num_samples <= 0 or outputs is None:
            return
        step = int(trainer.global_step)
        collect_samples(batch, outputs.real, False, self.samples, self.num_samples, step=step)
        if outputs.masked is not None:
            collect_samples(batch, outputs.masked, True, self.samples, self.num_samples, step=step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = self.samples
        if not samples or not trainer.is_global_zero or trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        for s in samples:
            s["step"] = step
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for lg in wandb_loggers:
            payload = {self.key: wandb_sample_table(samples), "trainer/global_step": step}
            payload.update({f"{self.key}/{k}": v for k, v in wandb_sample_images(samples).items()})
            lg.experiment.log(payload)
        if self.write_files is True or (self.write_files == "auto" and not wandb_loggers):
            out = Path(self.dirpath or Path(trainer.default_root_dir) / "val_samples")
            md, _ = write_samples(samples, out, f"step{step:06d}")
            log.info("validation samples written to %s", md)
