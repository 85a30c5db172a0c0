"""The validation sample table with an offline W&B logger: the table is logged, and its images survive the
offline run as media files that what was logged references (W&B keeps no image file of a table offline)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from papo.callbacks.sample_table import SampleTableCallback
from papo.evaluation.validation import ValidationOutput
from test_eval_metrics import _batch, make_exp


def logged_media_files(run_dir: Path, key: str, wait_s: float = 20.0) -> list[str]:
    """The image files the history of an offline run references under ``key`` (read from the raw
    ``run-*.wandb`` log: a list of images is logged with a ``filenames`` JSON array of their files).

    wandb's service may still be writing the log when ``wandb.finish()`` returns: read it again until the
    array is there or ``wait_s`` has passed."""
    name = re.compile(rf"media/images/{re.escape(key)}_\d+_[0-9a-f]+\.png")  # not {key}_masked_...
    deadline = time.monotonic() + wait_s
    while True:
        raw = next(run_dir.glob("run-*.wandb")).read_bytes().decode("utf-8", "replace")
        for match in re.finditer(r'\[("media/images/[^"\]]*"(?:,"media/images/[^"\]]*")*)\]', raw):
            files = json.loads(match.group(0))
            if all(name.fullmatch(f) for f in files):
                return files
        if time.monotonic() > deadline:
            return []
        time.sleep(0.2)


def test_wandb_table_offline_keeps_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging (table media)
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    batch = _batch(2)
    outputs = ValidationOutput(
        make_exp([1, 0], ["count"] * 2, ["high"] * 2), make_exp([0, 0], ["count"] * 2, ["high"] * 2)
    )
    logger = WandbLogger(project="papo-test", save_dir=str(tmp_path), offline=True)
    cb = SampleTableCallback(num_samples=2, dirpath=str(tmp_path / "files"))
    trainer = SimpleNamespace(
        loggers=[logger],
        is_global_zero=True,
        sanity_checking=False,
        global_step=4,
        default_root_dir=str(tmp_path),
    )
    try:
        cb.on_validation_batch_end(trainer, None, outputs, batch, 0)  # what validation_step returned
        cb.on_validation_end(trainer, None)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    tables = list(run_dir.glob("files/media/table/val/samples_*.table.json"))
    assert tables, f"no table in {run_dir}"
    assert '"image_masked"' in tables[0].read_text()
    for key in ("val/samples/images", "val/samples/images_masked"):
        files = logged_media_files(run_dir, key)
        assert len(files) == 2, (key, files)  # one per sample, referenced by the logged history
        assert all((run_dir / "files" / f).is_file() for f in files), files
    assert not (tmp_path / "files").exists()  # write_files=auto: W&B attached, no Markdown
