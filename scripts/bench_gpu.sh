#!/usr/bin/env bash
# One prepared GPU benchmark run (no network, nothing downloaded): a RANDOM-INIT model with Qwen2.5-VL-3B's
# dimensions, in bf16, trained for a few RL steps by our PapoModule (GRPO/DAPO step, then PAPO step), on the
# synthetic task with 448x448 images (256 image tokens), 8 prompts x G=4, 256 response tokens (forced).
# Reports seconds per step and per phase, response tokens/s, peak GPU memory, model-FLOPs utilisation (MFU)
# against the H100 dense bf16 peak (989 TFLOP/s; --peak-tflops) and against a measured bf16 matmul.
#
#   bash scripts/bench_gpu.sh                      # the GPU run (< 4 min on one H100; JSON to $OUT if set)
#   bash scripts/bench_gpu.sh --tiny               # CPU dry run of the same code path: tiny dims, 1 step
#   bash scripts/bench_gpu.sh --help               # all options
#
# Needs torch, transformers (>= 5), lightning, hydra-core, omegaconf, tokenizers, pillow, numpy in
# the Python it runs ($PYTHON, else .venv/bin/python, else python3); the repo itself is used from src/ (no
# install). The model: papo.models.tiny_vlm's builder (real Qwen2_5_VLForConditionalGeneration classes, real
# processor and chat template, locally trained 512-id tokenizer) with the published 3B config values: text
# hidden 2048, 36 layers, 16 heads, 2 KV heads, MLP 11008, vocab 151936 (tied embeddings), M-RoPE [16,24,24],
# rope theta 1e6; vision depth 32, hidden 1280, MLP 3420, 16 heads, window 112 px, full attention in blocks
# 7/15/23/31, patch 14, 2x2 merge, output 2048. Token ids beyond the 512-id tokenizer are suppressed in
# sampling (like the real model's padded ids), so the LM head keeps its real 151936-wide cost.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="$(command -v python3 || command -v python || true)"; fi
fi
if [ -z "$PY" ]; then
  echo "bench_gpu.sh: no python found (set PYTHON=/path/to/python)" >&2
  exit 3
fi
# Offline installs: wheels carried in $BENCH_WHEELS (default .bench_wheels/) are installed first. This
# workplace's GPU image lacks hydra-core and omegaconf; make them here with
#   .venv/bin/pip wheel --no-deps -w .bench_wheels hydra-core omegaconf antlr4-python3-runtime==4.9.3
# (pure Python, ~0.4 MB), exclude the folder from git (.git/info/exclude) and carry it to the GPU machine.
WHEELS="${BENCH_WHEELS:-.bench_wheels}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "bench_gpu.sh: installing carried wheels from $WHEELS (no network)"
  "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || echo "bench_gpu.sh: wheel install failed (continuing)" >&2
fi
if ! "$PY" -c "import torch, transformers, lightning, hydra, omegaconf, tokenizers, PIL, numpy" 2>/dev/null; then
  echo "bench_gpu.sh: $PY lacks packages this benchmark needs (there is no network to install them):" >&2
  "$PY" - <<'EOF' >&2 || true
import importlib
for name in ("torch", "transformers", "lightning", "hydra", "omegaconf", "tokenizers", "PIL", "numpy"):
    try:
        mod = importlib.import_module(name)
        print(f"  ok       {name} {getattr(mod, '__version__', '')}")
    except Exception as err:  # noqa: BLE001
        print(f"  MISSING  {name}: {type(err).__name__}: {err}")
EOF
  echo "  Point PYTHON at an environment that has them (e.g. PYTHON=/opt/conda/bin/python bash scripts/bench_gpu.sh)." >&2
  exit 3
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PROJECT_ROOT="$PWD"
# built stand-ins (the tokenizer/processor source) go to a writable cache
export PAPO_CACHE_DIR="${PAPO_CACHE_DIR:-$PWD/.cache}"

exec "$PY" - "$@" <<'PYEOF'
"""bench_gpu: see scripts/bench_gpu.sh's header."""

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path.cwd()
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

import bench  # noqa: E402  (scripts/bench.py: FLOP accounting, data, module driver)

# Qwen2.5-VL-3B-Instruct's published config (text + vision); the tiny spec is for --tiny dry runs.
QWEN25_VL_3B = dict(
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    mrope_section=(16, 24, 24),
    rope_theta=1_000_000.0,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    vision_depth=32,
    vision_hidden_size=1280,
    vision_intermediate_size=3420,
    vision_num_heads=16,
    vision_fullatt_block_indexes=(7, 15, 23, 31),
    vision_window_size=112,
    tie_word_embeddings=True,
)
VOCAB_3B = 151936

ap = argparse.ArgumentParser(prog="bench_gpu.sh", description="GPU RL-step benchmark, Qwen2.5-VL-3B dims")
ap.add_argument("--tiny", action="store_true", help="tiny dims, 1 step, CPU allowed: test the script itself")
ap.add_argument("--sides", default="grpo,papo", help="comma list: grpo (DAPO-like step) and/or papo")
ap.add_argument("--steps", type=int, default=2, help="measured steps per side")
ap.add_argument("--warmup", type=int, default=1, help="discarded steps per side")
ap.add_argument("--prompts", type=int, default=8)
ap.add_argument("--group-size", type=int, default=4)
ap.add_argument("--max-new-tokens", type=int, default=256)
ap.add_argument("--image-size", type=int, default=448, help="square images, px (448: 256 image tokens)")
ap.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
ap.add_argument("--no-grad-ckpt", action="store_true", help="turn activation checkpointing off (default on)")
ap.add_argument("--decoder", default="lean", help="rollout.decoder: lean (our decode loop) | generate (HF)")
ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa | flash_attention_2 | eager")
ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")
ap.add_argument("--budget-s", type=float, default=200.0, help="stop starting new steps after this (total)")
ap.add_argument("--lr", type=float, default=1e-6)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_gpu.json or logs/bench/)")
args = ap.parse_args(sys.argv[1:])
if args.tiny:
    args.steps, args.warmup, args.prompts, args.group_size = 1, 0, 2, 2
    args.max_new_tokens, args.image_size, args.micro_batch = 8, 56, 4
args.grid = 4  # 4x4 objects per scene at any image size
args.reward = "hash"  # no answer grading on the GPU run (math-verify need not be installed there)
args.model = "tiny"  # the stand-in that provides tokenizer + processor; its weights are replaced below
args.threads = os.cpu_count() or 1

cuda = torch.cuda.is_available()
if not cuda and not args.tiny:
    sys.exit("bench_gpu.sh: no CUDA device visible (torch.cuda.is_available() is False); --tiny runs on CPU")
device = torch.device("cuda" if cuda else "cpu")
card = torch.cuda.get_device_name(0) if cuda else "cpu"
import transformers  # noqa: E402

print(
    f"[bench_gpu] device {card}; torch {torch.__version__}, transformers {transformers.__version__}",
    flush=True,
)


def build_policy(tokenizer):
    """Random-init Qwen2.5-VL with the 3B dims (or tiny), bf16, directly on the device."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from papo.models.tiny_vlm import build_config, resolve_spec

    spec = resolve_spec("tiny") if args.tiny else resolve_spec("tiny", **QWEN25_VL_3B)
    config = build_config(spec, tokenizer)
    vocab = 1024 if args.tiny else VOCAB_3B  # padded output vocabulary (ids >= len(tokenizer) suppressed)
    config.text_config.vocab_size = vocab
    if hasattr(config, "vocab_size"):
        config.vocab_size = vocab
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    with torch.device(device):
        try:
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                config, dtype=torch.bfloat16, attn_implementation=args.attn
            )
        except TypeError:  # transformers 4.x
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                config, torch_dtype=torch.bfloat16, attn_implementation=args.attn
            )
    model.to(device=device, dtype=torch.bfloat16)
    if not args.no_grad_ckpt:
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    model.config.use_cache = True  # generation uses the KV cache; checkpointing applies in training mode only
    n = sum(p.numel() for p in model.parameters())
    print(f"[bench_gpu] built {n / 1e9:.3f}B params (bf16) in {time.perf_counter() - t:.1f}s", flush=True)
    return model


def matmul_bf16() -> float | None:
    if not cuda:
        return None
    return bench.matmul_rate(n=8192, reps=10, dtype="bfloat16", device="cuda")


def main() -> None:
    from papo.models.loading import generation_suppress_token_ids, padded_vocab_ids

    batches = bench.build_batches(args)
    extra = [
        "model.dtype=bfloat16",
        f"model.min_pixels={args.image_size**2}",
        f"model.max_pixels={args.image_size**2}",
        f"algo.micro_batch_size={args.micro_batch}",
        "rollout.max_prompt_length=4096",
        f"rollout.decoder={args.decoder}",
    ]
    policy = None
    results, rates = {}, [matmul_bf16()]
    sides = [s for s in args.sides.split(",") if s]
    for i, side in enumerate(sides):
        module, _ = bench.build_module(args, side, extra)
        if policy is None:
            policy = build_policy(module.processor.tokenizer)
        module.policy = policy  # replaces the stand-in's weights; processor and tokenizer stay
        policy.train()
        vocab = policy.config.text_config.vocab_size  # never sampled: placeholder + padded rows; scored: all but padded
        module.generator.suppress_ids = generation_suppress_token_ids(module.processor, vocab)
        module.suppress_ids = torch.tensor(padded_vocab_ids(module.processor, vocab), dtype=torch.long)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        left = args.budget_s - (time.perf_counter() - T0)
        budget = max(0.0, left / (len(sides) - i))
        print(f"[bench_gpu] {side}: {len(batches)} steps (budget {budget:.0f}s)", flush=True)
        steps, phases = bench.measure_module(module, batches, "gpu" if cuda else "cpu", budget_s=budget)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        reserved = torch.cuda.max_memory_reserved() if cuda else None
        ran = batches[: max(len(steps), args.warmup + 1)]
        flops = bench.flop_info(policy, module.processor, ran, args, side == "papo")
        keep = steps[args.warmup :] or steps[-1:]
        kept_phases = phases[args.warmup :] or phases[-1:]
        med = statistics.median(keep)
        tokens = args.prompts * args.group_size * args.max_new_tokens
        results[side] = {
            "step_s": steps,
            "step_s_median": med,
            "step_s_min": min(keep),
            "step_s_max": max(keep),
            "steps_measured": len(keep),
            "response_tokens_per_s": tokens / med,
            "phase_s_median": {p: statistics.median(x[p] for x in kept_phases) for p in bench.PHASES},
            "peak_gpu_mem_gib": peak / 2**30 if peak is not None else None,
            "peak_gpu_reserved_gib": reserved / 2**30 if reserved is not None else None,
            "flops_per_step": flops["flops"],
            "params": flops["params"],
            "model_tflops_per_s": flops["flops"]["total"] / med / 1e12,
            "mfu_vs_peak": flops["flops"]["total"] / med / (args.peak_tflops * 1e12),
        }
        module.policy = None  # keep the shared policy alive, free this module's optimiser state
        del module
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    rates.append(matmul_bf16())
    rate = statistics.median([r for r in rates if r]) if any(rates) else None
    for r in results.values():
        r["mfu_vs_measured_matmul"] = r["model_tflops_per_s"] * 1e12 / rate if rate else None

    print(
        f"\n[bench_gpu] {card}: {args.prompts} prompts x G={args.group_size}, {args.max_new_tokens} response tokens "
        f"(forced), {args.image_size}px images, micro-batch {args.micro_batch}, decoder {args.decoder}, "
        f"grad ckpt {'off' if args.no_grad_ckpt else 'on'}, bf16 params"
    )
    if rate:
        print(
            f"measured bf16 matmul (8192^3): {rate / 1e12:.0f} TFLOP/s; MFU below is vs {args.peak_tflops:.0f} peak"
        )
    head = (
        f"{'side':<5} {'s/step':>7} {'min-max':>15} {'tok/s':>7} {'TFLOP/s':>8} {'MFU':>6} {'GPU GiB':>8} | "
    )
    head += " ".join(f"{p[:8]:>8}" for p in bench.PHASES)
    print(head)
    print("-" * len(head))
    for side, r in results.items():
        mem = f"{r['peak_gpu_mem_gib']:>8.1f}" if r["peak_gpu_mem_gib"] is not None else f"{'-':>8}"
        print(
            f"{side:<5} {r['step_s_median']:>7.2f} {r['step_s_min']:>7.2f}-{r['step_s_max']:<7.2f} "
            f"{r['response_tokens_per_s']:>7.0f} {r['model_tflops_per_s']:>8.1f} {100 * r['mfu_vs_peak']:>5.1f}% "
            f"{mem} | " + " ".join(f"{r['phase_s_median'][p]:>8.2f}" for p in bench.PHASES)
        )
    if "grpo" in results and "papo" in results:
        print(
            f"PAPO/GRPO step time: {results['papo']['step_s_median'] / results['grpo']['step_s_median']:.2f}x"
        )
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": bench.git_commit(),
        "device": card,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "args": vars(args),
        "bf16_matmul_flops": rates,
        "results": results,
        "wall_s": time.perf_counter() - T0,
    }
    if args.out:
        out = Path(args.out)
    elif os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "bench_gpu.json"
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = ROOT / "logs" / "bench" / f"bench_gpu-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[bench_gpu] saved {out} (total {time.perf_counter() - T0:.0f}s)")


main()
PYEOF
