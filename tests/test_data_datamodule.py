"""PapoDataModule: batch format, column checks, seeded masks, resumable sampler and loader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from papo.data.datamodule import BATCH_KEYS, EpochShuffleSampler, PapoDataModule
from papo.data.images import ImageLoadError
from papo.data.masking import RandomPatchMask, ShuffledImageView, random_patch_mask
from papo.data.prompts import build_prompt
from papo.data.synthetic import build_synthetic_split

DATA_CFG = Path(__file__).resolve().parents[1] / "configs" / "data" / "synthetic.yaml"


@pytest.fixture(scope="module")
def train_ds():
    return build_synthetic_split("train", 48, seed=0)


@pytest.fixture(scope="module")
def val_ds():
    return build_synthetic_split("val", 10, seed=0)


def _dm(train_ds, val_ds=None, **kwargs) -> PapoDataModule:
    kwargs = {"masking": RandomPatchMask(), "batch_size": 4, "val_batch_size": 4, "seed": 1, **kwargs}
    dm = PapoDataModule(train_dataset=train_ds, val_dataset=val_ds, **kwargs)
    dm.setup("fit")
    return dm


def _fingerprint(batch) -> list:
    masked = batch["images_masked"] or [[] for _ in batch["uid"]]
    return [(u, [im.tobytes() for im in m]) for u, m in zip(batch["uid"], masked, strict=True)]


def test_batch_format(train_ds, val_ds):
    dm = _dm(train_ds, val_ds, prompt_template="short")
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch) == BATCH_KEYS
    assert all(len(batch[k]) == 4 for k in BATCH_KEYS)
    assert batch["prompt"] == [build_prompt(p, "short") for p in batch["problem"]]
    for imgs, masked in zip(batch["images"], batch["images_masked"], strict=True):
        assert len(imgs) == len(masked) == 1
        assert (
            imgs[0].mode == "RGB" and masked[0].mode == "RGB" and imgs[0].size == masked[0].size == (56, 56)
        )
    assert all(
        isinstance(batch[k][0], str) for k in ("uid", "problem", "answer", "task_type", "vision_dependency")
    )
    rows = {u: i for i, u in enumerate(train_ds["uid"])}
    for uid, answer in zip(batch["uid"], batch["answer"], strict=True):
        assert train_ds[rows[uid]]["answer"] == answer


def test_mask_is_seeded_from_seed_epoch_row(train_ds, val_ds):
    dm = _dm(train_ds, val_ds)
    batch = next(iter(dm.train_dataloader()))
    row = int(batch["uid"][0].split("-")[1])
    mask = random_patch_mask(56, 56, 14, 0.6, np.random.default_rng([1, 0, row]))  # seed 1, epoch 0
    real, masked = np.asarray(batch["images"][0][0]), np.asarray(batch["images_masked"][0][0])
    assert np.all(masked[mask] == 0) and np.array_equal(masked[~mask], real[~mask])


def test_no_masking_gives_none(train_ds):
    for masking in (None, {}):
        batch = next(iter(_dm(train_ds, masking=masking).train_dataloader()))
        assert batch["images_masked"] is None


def test_train_loader_drops_last_and_epochs_reshuffle(train_ds):
    dm = _dm(train_ds, batch_size=5)
    loader = dm.train_dataloader()
    epoch0 = [u for b in loader for u in b["uid"]]
    assert len(epoch0) == 45 and len(set(epoch0)) == 45  # 48 rows, batches of 5, last dropped
    assert epoch0 == [u for b in loader for u in b["uid"]]  # same epoch -> same order
    loader.sampler.set_epoch(1)
    epoch1 = [u for b in loader for u in b["uid"]]
    assert epoch1 != epoch0


def test_train_masks_fresh_each_epoch_val_masks_fixed(train_ds, val_ds):
    dm = _dm(train_ds, val_ds)
    loader = dm.train_dataloader()
    by_epoch = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        by_epoch.append(dict(fp for b in loader for fp in _fingerprint(b)))
    common = set(by_epoch[0]) & set(by_epoch[1])
    assert common and all(by_epoch[0][u] != by_epoch[1][u] for u in common)
    first = [fp for b in dm.val_dataloader() for fp in _fingerprint(b)]
    second = [fp for b in _dm(train_ds, val_ds).val_dataloader() for fp in _fingerprint(b)]
    assert first == second and len(first) == 10  # identical across evaluations, nothing dropped


def test_missing_column_error_names_dataset_and_columns():
    bad = Dataset.from_dict({"images": [[]], "question": ["q"], "answer": ["a"]})
    dm = PapoDataModule(train_dataset=bad, dataset_name="geometry3k")
    with pytest.raises(ValueError, match="geometry3k") as err:
        dm.setup("fit")
    message = str(err.value)
    assert "'problem'" in message and "present columns: ['images', 'question', 'answer']" in message


def test_optional_columns_filled_and_lazy_callable():
    png = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(png, format="PNG")
    rows = {
        "images": [[{"bytes": png.getvalue(), "path": None}]] * 3,
        "problem": ["q"] * 3,
        "answer": [1, 2, 3],
    }
    calls = []

    def build():
        calls.append(1)
        return Dataset.from_dict(rows)

    dm = PapoDataModule(val_dataset=build, masking=None, val_batch_size=8, dataset_name="tiny")
    assert calls == []  # built lazily
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert calls == [1]
    assert batch["uid"] == ["val-0", "val-1", "val-2"] and batch["answer"] == ["1", "2", "3"]
    assert batch["task_type"] == ["unknown"] * 3 and batch["vision_dependency"] == ["unknown"] * 3
    assert batch["images"][0][0].getpixel((0, 0)) == (
        255,
        255,
        255,
    )  # decoded from {bytes, path}, RGBA on white


def test_bad_image_error_names_dataset_and_row():
    good = io.BytesIO()
    Image.new("RGB", (4, 4)).save(good, format="PNG")
    ds = Dataset.from_dict(
        {
            "images": [[{"bytes": good.getvalue(), "path": None}], [{"bytes": b"corrupt", "path": None}]],
            "problem": ["a", "b"],
            "answer": ["1", "2"],
        }
    )
    dm = PapoDataModule(test_dataset=ds, masking=None, val_batch_size=2, dataset_name="virl39k")
    dm.setup("test")
    with pytest.raises(ImageLoadError, match="dataset=virl39k split=test row=1 uid=test-1 image=0"):
        next(iter(dm.test_dataloader()))
    small = PapoDataModule(test_dataset=ds, masking=None, dataset_name="virl39k", max_pixels=10)
    small.setup("test")
    with pytest.raises(ImageLoadError, match=r"row=0 uid=test-0 image=0.*max_pixels=10"):
        small.datasets["test"][0]


def test_sampler_pass_state_round_trip_continues_order():
    sampler = EpochShuffleSampler(20, seed=3)
    sampler.set_epoch(2)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    state = it.state_dict()
    assert state == {"epoch": 2, "yielded": 7, "seed": 3, "num_samples": 20}
    tail = list(it)
    resumed = EpochShuffleSampler(20, seed=3)  # a new process: its sampler is at epoch 0
    pass_ = iter(resumed)
    pass_.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning also calls set_epoch with the restored epoch
    assert list(pass_) == tail
    assert sorted(r for _, r in head + tail) == list(range(20)) and all(e == 2 for e, _ in head + tail)
    assert len(list(resumed)) == 20  # the next pass is a full epoch again
    resumed.set_epoch(3)
    assert [r for _, r in resumed] != [r for _, r in head + tail]
    with pytest.raises(ValueError, match="seed"):
        iter(EpochShuffleSampler(20, seed=4)).load_state_dict(state)


def test_sampler_shards_over_ranks():
    shards = [list(EpochShuffleSampler(11, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not {r for _, r in shards[0]} & {r for _, r in shards[1]}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_resume_continues_batches_and_masks(train_ds, num_workers):
    """A new process (a new datamodule, its sampler at epoch 0) resuming the train loader's state from
    mid-epoch 1 gets exactly the remaining batches, with the same masks; worker prefetching does not move
    the recorded position past the batches handed out."""
    dm = _dm(train_ds, num_workers=num_workers)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    it = iter(loader)
    consumed = [_fingerprint(next(it)) for _ in range(3)]
    state = loader.state_dict()
    rest = [_fingerprint(b) for b in it]
    assert len(consumed) + len(rest) == 12

    fresh = _dm(train_ds, num_workers=num_workers).train_dataloader()
    fresh.load_state_dict(state)
    assert [_fingerprint(b) for b in fresh] == rest
    fresh.sampler.set_epoch(2)  # the following epoch is whole again
    assert len(list(fresh)) == 12


def test_workers_give_the_same_batches(train_ds):
    main = [_fingerprint(b) for b in _dm(train_ds).train_dataloader()]
    assert [_fingerprint(b) for b in _dm(train_ds, num_workers=1).train_dataloader()] == main


def test_shuffled_view_pads_short_val_batches(val_ds):
    dm = PapoDataModule(val_dataset=val_ds, masking=ShuffledImageView(), val_batch_size=3, seed=0)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [len(b["uid"]) for b in batches] == [3, 3, 3, 1]
    for b in batches:
        for real, other in zip(b["images"], b["images_masked"], strict=True):
            assert real[0].tobytes() != other[0].tobytes()


def test_synthetic_config_instantiates_lazily():
    cfg = OmegaConf.create({"seed": 5, "data_seed": 0, "data": OmegaConf.load(DATA_CFG)})
    assert DATA_CFG.read_text().startswith("#")
    cfg.data.train_dataset.size = 16
    cfg.data.val_dataset.size = 4
    cfg.data.test_dataset.size = 4
    cfg.data.train_dataset.image_size = 84
    cfg.data.batch_size = 4
    dm = instantiate(cfg.data)
    assert isinstance(dm, PapoDataModule) and dm.masking is None and dm.seed == 5
    assert dm.datasets == {}  # nothing built before setup
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["uid"]) == 4 and batch["images_masked"] is None
    val = next(iter(dm.val_dataloader()))
    assert val["images"][0][0].size == (84, 84)  # val follows train's task settings by interpolation
    assert val["uid"][0] == "val-0"
    dm.setup("test")
    assert len(dm.datasets["test"]) == 4
    assert dm.train_set.column_names[:3] == ["images", "problem", "answer"] and len(dm.train_set) == 16
    # masking wired in by the lead's config composes with the datamodule
    cfg.data.masking = OmegaConf.load(DATA_CFG.parents[1] / "masking" / "random_patch.yaml")
    assert isinstance(instantiate(cfg.data).masking, RandomPatchMask)
    cfg.data.masking = OmegaConf.load(DATA_CFG.parents[1] / "masking" / "none.yaml")
    assert instantiate(cfg.data).masking is None
    # a view object passed through instantiate's kwargs (OmegaConf turns dataclasses into configs)
    cfg.data.masking = None
    for view in (RandomPatchMask(mask_prob=0.3, fill=(1, 2, 3)), ShuffledImageView(), None):
        assert instantiate(cfg.data, masking=view).masking == view
    with pytest.raises(TypeError, match="masking"):
        PapoDataModule(masking=3)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice about the toy module
@pytest.mark.parametrize("num_workers", [0, 1])
def test_lightning_checkpoint_resume_restores_data_position(train_ds, tmp_path, num_workers):
    """End to end: Lightning saves the train loader state in checkpoints and restores it mid-epoch (with a
    worker too, which prefetches before Lightning sets the resumed epoch)."""
    import lightning as L
    import torch

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.automatic_optimization = False
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, _fingerprint(batch)))
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward((self.weight**2).sum())
            opt.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch  # PIL images stay on the host

    def fit(ckpt_path=None, save=False):
        model = Recorder()
        callbacks = []
        if save:
            callbacks.append(
                L.pytorch.callbacks.ModelCheckpoint(
                    dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}"
                )
            )
        trainer = L.Trainer(
            max_steps=16,  # 12 batches per epoch: resume from step 14 is mid-epoch 1
            accelerator="cpu",
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=save,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, datamodule=_dm(train_ds, num_workers=num_workers), ckpt_path=ckpt_path)
        return model.seen

    full = fit(save=True)
    resumed = fit(ckpt_path=str(tmp_path / "step=14.ckpt"))
    assert len(full) == 16 and resumed == full[14:]


def test_one_masked_view_per_response(train_ds, val_ds):
    """masked_views_per_prompt=G: G views of each train prompt, the first the one-view batch's view, the others
    further draws from the prompt's generator (so they differ); validation draws one."""
    shared = next(iter(_dm(train_ds, val_ds, masking=RandomPatchMask(0.5)).train_dataloader()))
    dm = _dm(train_ds, val_ds, masking=RandomPatchMask(0.5, per_response=True), masked_views_per_prompt=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["uid"] == shared["uid"]
    assert all(len(views) == 4 for views in batch["images_masked_rows"])
    for views, first, one in zip(
        batch["images_masked_rows"], batch["images_masked"], shared["images_masked"], strict=True
    ):
        assert views[0][0].tobytes() == first[0].tobytes() == one[0].tobytes()
        assert len({v[0].tobytes() for v in views}) > 1, "every response's mask is drawn afresh"
    row = int(batch["uid"][0].split("-")[1])
    rng = np.random.default_rng([1, 0, row])  # seed 1, epoch 0: the views are the generator's draws in order
    for view in batch["images_masked_rows"][0]:
        mask = random_patch_mask(56, 56, 14, 0.5, rng)
        assert np.all(np.asarray(view[0])[mask] == 0)
    val = next(iter(dm.val_dataloader()))
    assert "images_masked_rows" not in val and val["images_masked"] is not None
    with pytest.raises(ValueError, match="masked_views_per_prompt"):
        PapoDataModule(masked_views_per_prompt=0)
