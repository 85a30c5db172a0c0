"""Supervised warm start: teach the embedded model the answer format before RL.

RL from a random-init model never sees a reward. This stage fine-tunes on reference responses
(``<think>...</think> \\boxed{answer}``, see :func:`papo.data.synthetic.reference_response`) with
token-mean cross-entropy on response tokens only, using the SAME prompt encoding and log-prob code as
RL (:func:`papo.models.logprobs.response_logps`). The result is cached under
``cache_dir/warm_start/<hash>`` (model + processor, ``save_pretrained``), built atomically, so the
first run builds it and later runs (and RL seeds) reuse it. Not part of the paper (which starts RL
from Qwen2.5-VL-Instruct); it stands in for instruction tuning on the embedded task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from papo.data.images import load_images
from papo.data.prompts import build_prompt
from papo.data.synthetic import reference_response
from papo.models.loading import load_policy
from papo.models.logprobs import response_logps
from papo.rollout.inputs import chat_texts, encode_prompts
from papo.utils.atomic_dir import build_dir_once, is_complete

log = logging.getLogger(__name__)


class SFTModule(L.LightningModule):
    """Cross-entropy on reference responses (response tokens only, token mean)."""

    def __init__(self, policy_dir: str, lr: float, weight_decay: float, template: str) -> None:
        super().__init__()
        self.policy, self.processor = load_policy(policy_dir)
        self.policy.train()
        self.lr, self.weight_decay, self.template = lr, weight_decay, template
        tok = self.processor.tokenizer
        self.eos = "<|im_end|>"
        self.pad_id = tok.pad_token_id

    def encode(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        images = [load_images(r["images"], context=f"warm-start row={r.get('uid', '?')}") for r in rows]
        prompts = [build_prompt(r["problem"], self.template) for r in rows]
        enc = encode_prompts(
            self.processor, chat_texts(self.processor, prompts, [len(x) for x in images]), images
        )
        tok = self.processor.tokenizer
        tok.padding_side = "right"
        resp = tok(
            [reference_response(r) + self.eos for r in rows],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        visual = {k: enc.pop(k) for k in ("pixel_values", "image_grid_thw") if k in enc}
        return {
            "prompt_ids": enc.pop("input_ids"),
            "prompt_mask": enc.pop("attention_mask"),
            "response_ids": resp["input_ids"],
            "response_mask": resp["attention_mask"].float(),
            "visual": visual,
            "extra": enc,
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logps = response_logps(self.policy, **batch)  # (B, T)
        mask = batch["response_mask"]
        loss = -(logps * mask).sum() / mask.sum().clamp(min=1)
        with torch.no_grad():
            acc = ((logps > -0.6931) | (mask == 0)).all(dim=1).float().mean()  # every token argmax-ish
        self.log_dict({"sft/loss": loss, "sft/seq_confident": acc}, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def _cache_key(ws: dict, base_dir: Path, data_cfg: dict, template: str) -> str:
    # continue_* belong to the continued-SFT control (papo.warm_start.continued), which starts FROM this
    # checkpoint: they must not give the shared warm start another key (it would be rebuilt per control)
    spec = {k: v for k, v in ws.items() if k not in ("cache", "enabled") and not k.startswith("continue_")}
    blob = json.dumps(
        {"ws": spec, "base": base_dir.name, "data": data_cfg, "template": template},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_warm_start(cfg: DictConfig, base_dir: Path, train_dataset: Any) -> Path:
    """Return the directory of the warm-started policy, building it (logged, cached) when missing.

    ``train_dataset``: the training split (a ``datasets.Dataset``) whose reference responses SFT uses.
    """
    ws = OmegaConf.to_container(cfg.warm_start, resolve=True)
    data_cfg = OmegaConf.to_container(cfg.data.train_dataset, resolve=True)
    template = cfg.data.get("prompt_template", "published")
    cache_root = Path(cfg.paths.cache_dir) / "warm_start"
    out_dir = cache_root / f"{base_dir.name}-{_cache_key(ws, base_dir, data_cfg, template)}"

    use_cache = bool(ws.get("cache", True))
    if use_cache and is_complete(out_dir):
        log.info("warm start: reusing cached checkpoint %s", out_dir)
        return out_dir

    rows = train_dataset
    if ws.get("task_types"):
        allowed = set(ws["task_types"])
        rows = rows.filter(lambda t: t in allowed, input_columns="task_type")
    n = max(1, int(len(rows) * float(ws.get("data_fraction", 1.0))))
    rows = rows.select(range(n))
    log.info(
        "warm start: SFT for %d steps on %d rows (task types: %s) -> %s",
        ws["max_steps"],
        n,
        ws.get("task_types") or "all",
        out_dir,
    )
    L.seed_everything(int(ws.get("seed", 0)), workers=True)
    module = SFTModule(str(base_dir), ws["lr"], ws.get("weight_decay", 0.0), template)
    gen = torch.Generator().manual_seed(int(ws.get("seed", 0)))
    loader = DataLoader(
        rows,
        batch_size=ws["batch_size"],
        shuffle=True,
        generator=gen,
        drop_last=len(rows) >= ws["batch_size"],
        collate_fn=lambda items: module.encode(items),
        num_workers=0,
    )
    trainer = L.Trainer(
        max_steps=ws["max_steps"],
        max_epochs=-1,
        accelerator=cfg.trainer.get("accelerator", "cpu"),
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(str(Path(cfg.paths.output_dir)), name="warm_start", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=min(10, int(ws["max_steps"])),
        enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)),
    )
    t0 = time.time()
    trainer.fit(module, loader)

    def save(tmp: Path) -> None:
        module.policy.save_pretrained(tmp)
        module.processor.save_pretrained(tmp)
        (tmp / "warm_start.json").write_text(
            json.dumps({"config": ws, "rows": n, "seconds": time.time() - t0}, indent=2)
        )

    # another process (a parallel reproduction stream, a DDP rank) may have built the same warm start
    # meanwhile: with the cache on, theirs is kept (it may already be in use) and ours dropped
    if build_dir_once(out_dir, save, rebuild=not use_cache):
        log.info("warm start: done in %.0f s, saved to %s", time.time() - t0, out_dir)
    else:
        log.info("warm start: done in %.0f s; %s was built meanwhile, using it", time.time() - t0, out_dir)
    return out_dir
