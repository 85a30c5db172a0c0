"""The warm-start cache under concurrency: when another process (a parallel reproduction stream, a DDP rank)
finishes the same warm start first, the later builder keeps the existing checkpoint and leaves no temp dir."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf
from transformers import PreTrainedModel


@pytest.mark.parametrize("cache", [True, False])
def test_a_warm_start_built_meanwhile_is_kept(make_cfg, tmp_path: Path, monkeypatch, cache: bool) -> None:
    """The other process finishes while ours is saving: with the cache on, theirs is kept and our temporary
    directory removed; with ``warm_start.cache=false`` ours replaces it (a rebuild was asked for)."""
    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import resolve_model_dir
    from papo.warm_start import ensure_warm_start
    from papo.warm_start.sft import _cache_key

    cfg = make_cfg(["warm_start.enabled=true", f"warm_start.cache={str(cache).lower()}"])
    cfg.paths.cache_dir = str(tmp_path / "cache")  # a fresh warm-start cache (the model cache is shared)
    base = Path(resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus))
    datamodule = hydra.utils.instantiate(cfg.data, masking=None)
    datamodule.setup("fit")
    ws, data = (OmegaConf.to_container(c, resolve=True) for c in (cfg.warm_start, cfg.data.train_dataset))
    key = _cache_key(ws, base, data, cfg.data.get("prompt_template", "published"))
    theirs = tmp_path / "cache" / "warm_start" / f"{base.name}-{key}"
    real_save = PreTrainedModel.save_pretrained

    def save_while_another_process_finishes(self, *a, **k):
        real_save(self, *a, **k)
        theirs.mkdir(parents=True)
        (theirs / "config.json").write_text("{}")
        (theirs / "marker").write_text("built by the other process")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_while_another_process_finishes)
    out = ensure_warm_start(cfg, base, datamodule.train_set)
    assert out == theirs
    # cache on: kept, not replaced under the other's feet; cache off: ours replaces it
    assert (out / "marker").exists() is cache and (out / "warm_start.json").exists() is not cache
    assert not [p for p in theirs.parent.iterdir() if ".tmp-" in p.name]  # our temporary copy is gone
