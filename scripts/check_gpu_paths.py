"""GPU smoke check of the real-model paths with the tiny stand-ins (no download): one RL step each of the
published experiment configs on one GPU, bf16-mixed, with gradient checkpointing, then a validation pass.

    python scripts/check_gpu_paths.py [--out results.json] [--cases papo_g_3b,fsdp,...]

Cases: the Qwen2.5-VL and Qwen3-VL stand-ins on trainer=gpu (the default decoder: static cache + CUDA graphs; one case with HF generate), LoRA
(reference = adapters disabled), bf16 master weights, Lightning's FSDP2 strategy and DeepSpeed ZeRO-2 / ZeRO-3
(with and without a reference model) on one device; the DeepSpeed cases need the deepspeed package. Prints one
line per case and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

BASE = [
    "trainer.max_steps=3",
    "trainer.devices=1",
    "trainer.val_check_interval=null",
    "trainer.enable_progress_bar=false",
    "model.stand_in=tiny",
    "model.min_pixels=3136",
    "model.max_pixels=12544",
    "data.val_dataset.limit=8",
    "data.batch_size=6",
    "data.num_workers=0",
    "algo.group_size=4",
    "algo.micro_batch_size=8",
    "algo.dynamic_sampling.enabled=false",
    "rollout.max_new_tokens=16",
    "rollout.max_prompt_length=512",
    "validate_before=false",
    "validate_after=true",
    "optim.lr=1e-3",
    "logger=none",
    "callbacks=[rank_sync]",
]
CASES = {
    "papo_g_3b": ["experiment=papo_g_3b", "trainer=gpu"],
    "papo_g_qwen3_vl_2b": ["experiment=papo_g_qwen3_vl_2b", "trainer=gpu"],
    "grpo_3b_lora": ["experiment=grpo_3b", "trainer=gpu", "model.lora.rank=8"],
    "papo_d_7b_bf16_weights": ["experiment=papo_d_7b", "trainer=gpu", "model.dtype=bfloat16"],
    "papo_g_7b_fsdp_1gpu": ["experiment=papo_g_7b", "trainer=fsdp"],
    "papo_g_3b_hf_generate": ["experiment=papo_g_3b", "trainer=gpu", "rollout.decoder=generate"],
    "papo_g_3b_zero2": ["experiment=papo_g_3b", "trainer=deepspeed_zero2"],
    "grpo_3b_zero3": ["experiment=grpo_3b", "trainer=deepspeed_zero3"],
    "papo_d_7b_zero3": ["experiment=papo_d_7b", "trainer=deepspeed_zero3"],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides (e.g. trainer=cpu for a dry run)")
    args = ap.parse_args()

    import torch
    from omegaconf import open_dict

    import papo.utils  # noqa: F401  (resolvers)
    from papo.data.digits import build_digits_split
    from papo.pipeline import train

    work = Path(tempfile.mkdtemp(prefix="papo_gpu_"))
    data = work / "train.parquet"
    build_digits_split("train", 64, seed=0).select_columns(["images", "problem", "answer"]).to_parquet(
        str(data)
    )
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(json.dumps(info), flush=True)
    results = {"env": info, "cases": {}}
    for name in args.cases.split(","):
        out = work / name
        overrides = CASES[name] + BASE
        overrides += [f"data.train_dataset.source={data}", f"data.val_dataset.source={data}"]
        overrides += [f"callbacks.rank_sync.output_dir={out / 'sync'}", *args.extra]
        t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            cfg = compose(overrides)
            with open_dict(cfg):
                cfg.paths.output_dir = str(out)
                cfg.paths.cache_dir = str(work / "cache")
                cfg.model.cache_dir = str(work / "cache" / "models")
            metrics = train(cfg)
            rec = json.loads((out / "sync" / "rank0.json").read_text())
            res = {
                "ok": rec["start_digest"] != rec["end_digest"] and rec["global_step"] == 3,
                "global_step": rec["global_step"],
                "weights_changed": rec["start_digest"] != rec["end_digest"],
                "val_acc": metrics.get("val/acc"),
                "val_acc_masked": metrics.get("val/acc_masked"),
                "strategy": str(cfg.trainer.get("strategy", {}).get("_target_", "single device")),
                "precision": cfg.trainer.precision,
            }
        except Exception as e:  # one case failing must not hide the others
            res = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:],
            }
        res["seconds"] = round(time.perf_counter() - t0, 1)
        if torch.cuda.is_available():
            res["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        results["cases"][name] = res
        print(name, json.dumps({k: v for k, v in res.items() if k != "traceback"}), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if all(r["ok"] for r in results["cases"].values()) else 1)


if __name__ == "__main__":
    main()
