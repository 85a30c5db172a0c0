"""The warm-start cache under concurrency: when another process (a parallel reproduction stream, a DDP rank)
finishes the same warm start first, the later builder keeps the existing checkpoint and leaves no temp dir."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from omegaconf import OmegaConf


def test_a_warm_start_built_meanwhile_is_kept(make_cfg, tmp_path: Path, monkeypatch) -> None:
    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import resolve_model_dir
    from papo.warm_start import ensure_warm_start
    from papo.warm_start.sft import _cache_key

    cfg = make_cfg(["warm_start.enabled=true"])
    cfg.paths.cache_dir = str(tmp_path / "cache")  # a fresh warm-start cache (the model cache is shared)
    base = Path(resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus))
    datamodule = hydra.utils.instantiate(cfg.data, masking=None)
    datamodule.setup("fit")
    ws, data = (OmegaConf.to_container(c, resolve=True) for c in (cfg.warm_start, cfg.data.train_dataset))
    key = _cache_key(ws, base, data, cfg.data.get("prompt_template", "published"))
    theirs = tmp_path / "cache" / "warm_start" / f"{base.name}-{key}"
    real_fit = L.Trainer.fit

    def fit_then_another_process_finishes(self, *a, **k):
        real_fit(self, *a, **k)
        theirs.mkdir(parents=True)
        (theirs / "config.json").write_text("{}")
        (theirs / "marker").write_text("built by the other process")

    monkeypatch.setattr(L.Trainer, "fit", fit_then_another_process_finishes)
    out = ensure_warm_start(cfg, base, datamodule.train_set)
    assert out == theirs and (out / "marker").exists()  # kept, not replaced under the other's feet
    assert not list(theirs.parent.glob(".tmp-*"))  # ours dropped
