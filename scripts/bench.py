"""Speed and memory benchmark: TRL's ``GRPOTrainer`` vs our GRPO/DAPO step vs our PAPO step, at equal work.

    python scripts/bench.py                                   # full measurement (quiet machine, ~12 min)
    python scripts/bench.py --models tiny --rounds 1 --steps 2 --warmup 1 --prompts 2 --group-size 2 \\
        --max-new-tokens 8 --threads 1 --skip-trl             # smoke run (< 1 min)
    python scripts/bench.py --sides trl,grpo,papo,grpo_base,papo_base   # + ours with the speed-ups off

What runs, side by side, on the same embedded Qwen2.5-VL (``tiny`` ~0.4M and ``small`` ~14M parameters,
papo.models.tiny_vlm), the same prompts and images (papo.data.synthetic), the same G, prompt and response
lengths (EOS blocked until ``max_new_tokens``: ``min_new_tokens = max_new_tokens`` on both sides), fp32, no
gradient checkpointing, one optimiser step per rollout batch, no reference model, the same reward
(the math reward plus a deterministic hash jitter of the response text, so rewards vary):

* ``trl``:  TRL ``GRPOTrainer`` (``use_vllm=False``, ``bf16=False``, ``loss_type="dapo"``, ``beta=0``,
  ``num_iterations=1``, ``steps_per_generation=1``, ``gradient_accumulation_steps=1``: one generation batch per
  optimiser step and no old-log-prob pass; ``activation_checkpointing=False``, since TRL defaults it ON);
* ``grpo``: our ``PapoModule`` under a minimal Lightning ``Trainer``, ``algo=dapo`` without dynamic sampling,
  ``loss=none`` (one update per rollout batch, the first update reuses its own log-probs as old ones);
* ``papo``: the same plus the masked-image forward and both PAPO loss terms (``loss=papo``);
* ``grpo_base`` / ``papo_base`` (optional): ours with docs/performance.md's speed-ups turned off (per-tensor
  AdamW; HF ``generate`` instead of the lean decode loop; images encoded once per sequence in generation and in
  the log-prob passes), to show what they bought.

Each (model, side, round) runs in its own subprocess, so peak resident memory (``ru_maxrss``) is per side;
``--rounds`` repeats the sides in alternating order and pools their steps (robust to load drift). Per step
(after ``--warmup`` discarded steps) it records wall seconds between consecutive step ends, response tokens
per second and time per phase, by the same public instruments on every side: ``generate`` (the policy's
no-grad forward passes during the rollout: the decode steps, timed by forward hooks on the model), ``score``
(the reward function), ``rollout_other`` (the rest of the rollout: chat template, processor, the decode loop's
own sampling and cache bookkeeping, batching), ``logp_nograd`` (no-grad log-prob passes: PAPO's masked
forward), ``forward`` (log-prob forward with grad + loss terms), ``backward``, ``other`` (optimiser, grad clip,
framework overhead, logging). Ours takes the phase boundaries from the module's PhaseTimer; TRL's from a
``TrainerCallback`` and tensor hooks on our model (:class:`ModelPhaseHooks`): no TRL method is wrapped or
patched (docs/performance.md says what each TRL phase then includes).

FLOP floor: the model FLOPs of one step counted from the model's linear layers (2 FLOPs per weight per token
forward, backward = 2x forward) plus attention (4 * layers * heads * head_dim per query-key pair, causal):
the rollouts' vision encoding, prefill and decode (KV cache, LM head on one position per new token), the
log-prob forward (LM head on response positions only) and its backward, and for PAPO the masked forward.
Each prompt's images count once per pass (rollout, forward, backward, masked forward), not once per row, and
each prompt's rollout prefill once: a group's G rows share them, so computing them G times is overhead, not
floor.
Divided by this machine's fp32 matmul rate (median of timed 2048x2048 ``torch.matmul``), it is the time a
step would take at 100 % of that rate; MFU = floor / measured median step time. TRL and our GRPO step do the
same model work, so they share one floor.

Results: a table on stdout and ``logs/bench/bench-<time>.json`` (``--out``; with date, commit, machine and
command). Worker logs go next to it. ``--write-doc docs/performance.md --section NAME`` writes the table into
that section of the document (between its markers); ``--from-json`` does so for a saved JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

SIDES = ("trl", "grpo", "papo")
# ablations: our sides with this branch's speed-ups turned off (what each change bought)
BASE_SIDES = ("grpo_base", "papo_base")
PHASES = ("generate", "score", "rollout_other", "logp_nograd", "forward", "backward", "other")


# ==========================================================================================================
# FLOP accounting (shared with scripts/bench_gpu.sh)
# ==========================================================================================================
def model_dims(model: Any) -> dict[str, Any]:
    """Weights per token of each part of a Qwen2.5-VL (2-D weights only: norms and biases ignored)."""
    inner = model.model
    lm = getattr(inner, "language_model", inner)  # transformers 4.x: model.model is the text model
    vis = getattr(inner, "visual", None) or model.visual
    tc, vc = model.config.text_config, model.config.vision_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    vis_heads = vc.num_heads
    return {
        "text_linear": sum(p.numel() for p in lm.layers.parameters() if p.dim() >= 2),
        "lm_head": model.get_output_embeddings().weight.numel(),
        "text_attn_dim": tc.num_attention_heads * head_dim,
        "text_layers": tc.num_hidden_layers,
        # patch embedding (a Conv3d: one weight per input value per output channel) + ViT blocks, per patch
        "vision_linear": sum(p.numel() for p in vis.blocks.parameters() if p.dim() >= 2)
        + vis.patch_embed.proj.weight.numel(),
        "merger_linear": sum(p.numel() for p in vis.merger.parameters() if p.dim() >= 2),
        "vision_attn_dim": vc.hidden_size // vis_heads * vis_heads,
        "vision_depth": vc.depth,
        "vision_full_blocks": len(list(getattr(vc, "fullatt_block_indexes", []) or [])),
        # window side in patches: window_size px / patch px (Qwen2.5-VL: 112 / 14 = 8)
        "vision_window": max(1, int(getattr(vc, "window_size", 0) or 0) // vc.patch_size),
        "merge": vc.spatial_merge_size,
    }


def _causal_pairs(s: int) -> int:
    """Query-key pairs of causal attention over ``s`` tokens."""
    return s * (s + 1) // 2


def vision_flops(d: dict[str, Any], grid_hw: tuple[int, int]) -> float:
    """Forward FLOPs of the vision tower on one image of ``grid_hw`` patches (h, w); temporal grid 1."""
    h, w = grid_hw
    n = h * w
    flops = 2.0 * d["vision_linear"] * n + 2.0 * d["merger_linear"] * n / d["merge"] ** 2
    win = d["vision_window"]
    windows = [min(win, h - i) * min(win, w - j) for i in range(0, h, win) for j in range(0, w, win)]
    full, windowed = d["vision_full_blocks"], d["vision_depth"] - d["vision_full_blocks"]
    flops += 4.0 * d["vision_attn_dim"] * (full * n * n + windowed * sum(k * k for k in windows))
    return flops


def forward_flops(d: dict[str, Any], prompt_len: int, resp_len: int, grid_hw: list[tuple[int, int]]) -> float:
    """One row's log-prob forward: vision + text over prompt+response, LM head on the response positions."""
    s = prompt_len + resp_len
    text = 2.0 * d["text_linear"] * s + 4.0 * d["text_layers"] * d["text_attn_dim"] * _causal_pairs(s)
    return sum(vision_flops(d, g) for g in grid_hw) + text + 2.0 * d["lm_head"] * resp_len


def prefill_flops(d: dict[str, Any], prompt_len: int) -> float:
    """One prompt's rollout prefill (text only): all prompt tokens, LM head on the last position."""
    att = 4.0 * d["text_layers"] * d["text_attn_dim"]
    return 2.0 * d["text_linear"] * prompt_len + att * _causal_pairs(prompt_len) + 2.0 * d["lm_head"]


def decode_flops(d: dict[str, Any], prompt_len: int, resp_len: int) -> float:
    """One row's ``resp_len - 1`` decode steps after the prefill (KV cache; LM head on the new token)."""
    att = 4.0 * d["text_layers"] * d["text_attn_dim"]
    return sum(2.0 * (d["text_linear"] + d["lm_head"]) + att * (prompt_len + j) for j in range(1, resp_len))


def step_flops(
    d: dict[str, Any],
    rows: list[tuple[int, list[tuple[int, int]]]],
    resp_len: int,
    masked_forward: bool,
    group_size: int = 1,
) -> dict[str, float]:
    """Model FLOPs of one RL step over ``rows`` = [(prompt tokens, [image grids (h, w) in patches])] (one per
    sequence: each prompt's row repeated ``group_size`` times in a row): rollout + forward + backward (2x)
    [+ masked forward]. The floor is the work a step needs: each prompt's images are encoded once per pass
    and each prompt is prefilled once for its G samples (the G rows of a group share both, as with vLLM's
    prefix caching); the decode steps and the log-prob passes are per row."""
    prompts = rows[::group_size]
    vision = sum(vision_flops(d, g) for _, grids in prompts for g in grids)
    gen = (
        vision
        + sum(prefill_flops(d, p) for p, _ in prompts)
        + sum(decode_flops(d, p, resp_len) for p, _ in rows)
    )
    fwd = vision + sum(forward_flops(d, p, resp_len, []) for p, _ in rows)
    out = {
        "generate": gen,
        "forward": fwd,
        "backward": 2.0 * fwd,
        "masked_forward": fwd if masked_forward else 0.0,
    }
    out["total"] = sum(out.values())
    return out


def matmul_rate(n: int = 2048, reps: int = 7, dtype: str = "float32", device: str = "cpu") -> float:
    """Median FLOP/s of an ``n x n`` matmul through torch (after one warm-up)."""
    import torch

    dt_ = getattr(torch, dtype)
    a = torch.randn(n, n, dtype=dt_, device=device)
    b = torch.randn(n, n, dtype=dt_, device=device)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


# ==========================================================================================================
# Shared worker set-up
# ==========================================================================================================
def compose(overrides: list[str]) -> Any:
    """``configs/train.yaml`` with ``overrides`` (and the Hydra runtime config set, for ${hydra:...})."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import papo.utils  # noqa: F401  (resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def our_overrides(args: argparse.Namespace, side: str) -> list[str]:
    n = args.prompts * args.group_size
    return [
        f"model={args.model}",
        "algo=dapo",
        "algo.dynamic_sampling.enabled=false",
        f"algo.group_size={args.group_size}",
        f"algo.micro_batch_size={n}",
        "algo.num_minibatches=1",
        "algo.ppo_epochs=1",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.min_new_tokens={args.max_new_tokens}",
        # *_base: a chunk size that is no multiple of G turns off per-prompt generation (images encoded G times)
        f"rollout.generation_batch_size={n + 1 if side.endswith('_base') and args.group_size > 1 else n}",
        # *_base: HF generate instead of the lean decode loop
        f"rollout.decoder={'generate' if side.endswith('_base') else 'lean'}",
        f"loss={'papo' if side.startswith('papo') else 'none'}",
        "warm_start=none",
        "logger=none",
        "callbacks=none",
        f"optim.lr={args.lr}",
        f"seed={args.seed}",
    ]


def bench_reward(text: str, truth: str, kind: str = "math_jitter") -> float:
    """``math_jitter``: the math reward plus a deterministic jitter in [0, 0.1) from the response text (so
    rewards vary); ``hash``: the jitter alone (no grading, no math-verify)."""
    jitter = 0.1 * (zlib.crc32(text.encode()) / 2**32)
    if kind == "hash":
        return jitter
    from papo.rewards import score_response

    return score_response(text, truth)["overall"] + jitter


def build_batches(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``warmup + steps`` batches of ``prompts`` prompts in the datamodule's batch format (masked views too).

    The items of ``build_synthetic_split("train", seed=0)`` (same generator, same pixels), drawn without the
    ``datasets`` package so the GPU script runs where it is missing."""
    import numpy as np

    from papo.data.masking import RandomPatchMask
    from papo.data.prompts import build_prompt
    from papo.data.synthetic import SyntheticTaskConfig, _split_key, generate_example

    n_steps = args.warmup + args.steps
    task = SyntheticTaskConfig(image_size=args.image_size, grid=getattr(args, "grid", None))
    key = _split_key("train")
    mask = RandomPatchMask()
    batches = []
    for s in range(n_steps):
        idx = range(s * args.prompts, (s + 1) * args.prompts)
        rows = [generate_example(np.random.default_rng([0, key, i]), task) for i in idx]
        images = [[r["image"].convert("RGB")] for r in rows]
        rngs = [np.random.default_rng([args.seed, i]) for i in idx]
        batches.append(
            {
                "uid": [f"train-{i}" for i in idx],
                "problem": [r["problem"] for r in rows],
                "prompt": [build_prompt(r["problem"], "short") for r in rows],
                "images": images,
                "images_masked": mask(images, rngs),
                "answer": [r["answer"] for r in rows],
                "task_type": [r["task_type"] for r in rows],
                "vision_dependency": [r["vision_dependency"] for r in rows],
            }
        )
    return batches


def batch_rows(
    processor: Any, batch: dict[str, Any], group_size: int
) -> list[tuple[int, list[tuple[int, int]]]]:
    """(prompt tokens without padding, [image grids (h, w)]) per sequence of a batch (prompts x G)."""
    from papo.rollout.inputs import chat_texts, encode_prompts

    num_images = [len(x) for x in batch["images"]]
    enc = encode_prompts(processor, chat_texts(processor, batch["prompt"], num_images), batch["images"])
    lengths = enc["attention_mask"].sum(1).tolist()
    grids = [(int(g[1]), int(g[2])) for g in enc["image_grid_thw"].tolist()]
    rows, k = [], 0
    for length, m in zip(lengths, num_images, strict=True):
        rows += [(int(length), grids[k : k + m])] * group_size
        k += m
    return rows


class Clock:
    """Step wall times (consecutive step ends) and per-step phase seconds."""

    def __init__(self, sync: Any = None) -> None:
        self.sync = sync or (lambda: None)
        self.last: float | None = None
        self.steps: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.acc: dict[str, float] = {}

    def start(self) -> None:
        if self.last is None:
            self.last = time.perf_counter()

    def end(self, phases: dict[str, float]) -> None:
        self.sync()
        t = time.perf_counter()
        self.steps.append(t - (self.last if self.last is not None else t))
        self.last = t
        self.phases.append(phases)

    def add(self, name: str, seconds: float) -> None:
        self.acc[name] = self.acc.get(name, 0.0) + seconds

    def pop(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out

    def timed(self, name: str, fn: Any, grad_name: str | None = None) -> Any:
        """Wrap ``fn`` so its wall time adds to ``name`` (``grad_name`` instead when grad is enabled)."""
        import torch

        def wrapper(*a: Any, **k: Any) -> Any:
            key = grad_name if grad_name and torch.is_grad_enabled() else name
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.sync()
                self.add(key, time.perf_counter() - t0)

        return wrapper


def finish_phases(step_s: float, raw: dict[str, float]) -> dict[str, float]:
    """Common phase names; ``other`` = step time not covered by a phase."""
    out = {p: float(raw.get(p, 0.0)) for p in PHASES if p != "other"}
    out["other"] = max(0.0, step_s - sum(out.values()))
    return out


# ==========================================================================================================
# Workers (one process per model x side)
# ==========================================================================================================
def build_module(args: argparse.Namespace, side: str, extra_overrides: list[str] | None = None) -> Any:
    """Our ``PapoModule`` configured for ``side`` (grpo | papo) as ``src/papo/pipeline.py`` builds it, with the
    benchmark reward. Returns (module, model_dir)."""
    import lightning as L

    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import build_module as build_papo_module
    from papo.pipeline import resolve_model_dir

    cfg = compose(our_overrides(args, side) + list(extra_overrides or []))
    L.seed_everything(args.seed, workers=True, verbose=False)
    model_dir = resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus)
    module = build_papo_module(cfg, model_dir, total_steps=args.warmup + args.steps)
    kind = getattr(args, "reward", "math_jitter")
    module.source.reward_fn = lambda text, truth, **_: {
        "overall": bench_reward(text, truth, kind),
        "accuracy": 0.0,
        "format": 0.0,
    }
    return module, model_dir


def measure_module(
    module: Any,
    batches: list[dict[str, Any]],
    accelerator: str = "cpu",
    budget_s: float | None = None,
    decode_timing: str = "forward_hooks",
) -> tuple[list[float], list[dict[str, float]]]:
    """Fit ``module`` on ``batches`` (one step each) under a minimal Lightning Trainer.

    Returns (wall seconds per step, phase seconds per step). On CUDA every phase boundary synchronises, so
    phases are not skewed by asynchronous kernels. ``budget_s``: stop after the step that crosses it.
    ``decode_timing``: what the ``generate`` phase times (``forward_hooks`` or ``decode_calls``, see below).
    """
    import lightning as L
    import torch

    import papo.rollout.collect as collect
    from papo.utils.timer import PhaseTimer

    cuda = accelerator in ("gpu", "cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = Clock(sync)
    # ``generate``: by default the same instrument as the TRL side, the policy's no-grad forward passes during
    # the rollout (forward hooks); ``decode_timing="decode_calls"`` times the decode-loop calls instead (sampling
    # included), which also counts CUDA-graph replays, where no forward runs (scripts/bench_gpu.py)
    module.source.reward_fn = clock.timed("score", module.source.reward_fn)
    originals = collect.hf_generate, collect.lean_generate, collect.static_generate
    if decode_timing == "decode_calls":
        collect.hf_generate = clock.timed("generate", collect.hf_generate)
        collect.lean_generate = clock.timed("generate", collect.lean_generate)
        collect.static_generate = clock.timed("generate", collect.static_generate)
    elif decode_timing != "forward_hooks":
        raise ValueError(f"decode_timing={decode_timing!r}; valid: forward_hooks, decode_calls")
    pending: list[dict[str, float]] = []
    state = {"phase": None, "t0": None}

    def fwd_pre(mod: Any, args: Any) -> None:
        if decode_timing == "forward_hooks" and state["phase"] == "generate" and not torch.is_grad_enabled():
            sync()
            state["t0"] = time.perf_counter()

    def fwd_post(mod: Any, args: Any, out: Any) -> None:
        if state["t0"] is not None:
            sync()
            clock.add("generate", time.perf_counter() - state["t0"])
            state["t0"] = None

    hooks = [module.policy.register_forward_pre_hook(fwd_pre), module.policy.register_forward_hook(fwd_post)]

    class BenchTimer(PhaseTimer):
        @contextlib.contextmanager
        def __call__(self, phase: str) -> Iterator[None]:  # synchronised phase boundaries
            sync()
            t0 = time.perf_counter()
            state["phase"] = phase
            try:
                yield
            finally:
                sync()
                state["phase"] = None
                self.seconds[phase] += time.perf_counter() - t0

        def pop(self) -> dict[str, float]:
            sync()
            secs = super().pop()
            inner = clock.pop()
            pending.append(
                {
                    "generate": inner.get("generate", 0.0),
                    "score": inner.get("score", 0.0) + secs.get("score", 0.0),
                    "rollout_other": secs.get("generate", 0.0)
                    - inner.get("generate", 0.0)
                    - inner.get("score", 0.0),
                    "logp_nograd": secs.get("old_logps", 0.0),
                    "forward": secs.get("forward", 0.0),
                    "backward": secs.get("backward", 0.0),
                }
            )
            return secs

    module.source.timer = BenchTimer()
    t_start = time.perf_counter()

    class StepClock(L.Callback):
        def on_train_batch_start(self, *a: Any) -> None:
            clock.start()

        def on_train_batch_end(self, trainer: Any, *a: Any) -> None:
            clock.pop()
            clock.end(pending.pop() if pending else {})
            if budget_s is not None and time.perf_counter() - t_start > budget_s:
                trainer.should_stop = True

    loader = torch.utils.data.DataLoader(batches, batch_size=1, collate_fn=lambda x: x[0])
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[StepClock()],
    )
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        for h in hooks:
            h.remove()
        collect.hf_generate, collect.lean_generate, collect.static_generate = originals
    phases = [finish_phases(s, p) for s, p in zip(clock.steps, clock.phases, strict=True)]
    return clock.steps, phases


def run_ours(args: argparse.Namespace, side: str) -> dict[str, Any]:
    import psutil
    import torch

    if side.endswith("_base"):  # the per-tensor AdamW loop instead of the fused kernel
        import papo.models.logprobs

        class UnfusedAdamW(torch.optim.AdamW):
            def __init__(self, *a: Any, **k: Any) -> None:
                k.pop("fused", None)
                super().__init__(*a, **k)

        torch.optim.AdamW = UnfusedAdamW
        # and every row's image through the vision tower in the log-prob passes (pixels repeated per row)
        papo.models.logprobs.shares_image_features = lambda model: False
    module, model_dir = build_module(args, side)
    batches = build_batches(args)
    rss_setup = psutil.Process().memory_info().rss
    steps, phases = measure_module(module, batches)
    return {
        "step_s": steps,
        "phases": phases,
        "rss_setup": rss_setup,
        "model_dir": str(model_dir),
        **flop_info(module.policy, module.processor, batches, args, masked_forward=side.startswith("papo")),
    }


def flop_info(
    model: Any, processor: Any, batches: list[dict], args: argparse.Namespace, masked_forward: bool
):
    d = model_dims(model)
    per_step = [
        step_flops(
            d, batch_rows(processor, b, args.group_size), args.max_new_tokens, masked_forward, args.group_size
        )
        for b in batches[args.warmup :]
    ]
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "dims": d,
        "flops": {k: statistics.mean(f[k] for f in per_step) for k in per_step[0]},
    }


class ModelPhaseHooks:
    """The TRL side's phases from public extension points only: forward hooks on the policy
    (``nn.Module.register_forward_pre_hook`` / ``register_forward_hook``), gradient hooks on its outputs
    (``Tensor.register_hook`` on the logits or TRL's fused-head log-probs: the model's backward starts) and on every trainable parameter
    (``Tensor.register_post_accumulate_grad_hook``: the last one ends the backward pass). Per step (between
    ``begin_step`` and ``end_step``, called from a TrainerCallback):

    * rollout = step start -> first forward with grad; within it ``generate`` = the model's no-grad forward
      passes (the decode steps), ``score`` = the reward function (timed by the caller), ``rollout_other`` = the
      rest (chat template, processor, ``generate``'s own sampling loop, advantages);
    * ``logp_nograd`` = no-grad forwards after the rollout (none with ``num_iterations=1, beta=0``);
    * ``forward`` = first forward with grad -> the model's backward starts (log-probs and loss terms);
    * ``backward`` = -> the last parameter's gradient is accumulated; the rest (grad clip, optimiser,
      TRL's bookkeeping and logging) is ``other``.
    """

    def __init__(self, model: Any) -> None:
        import torch

        self._torch = torch
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._grad_done)
        self.begin_step()

    def begin_step(self) -> None:
        self.t_step = time.perf_counter()
        self.t_grad_fwd: float | None = None  # first forward with grad
        self.t_bwd: float | None = None  # the model's backward starts
        self.t_grad_done: float | None = None  # last parameter gradient accumulated
        self.nograd_rollout = self.nograd_after = 0.0
        self._t0: float | None = None

    def _pre(self, module: Any, args: Any) -> None:
        self._t0 = time.perf_counter()
        if self._torch.is_grad_enabled() and self.t_grad_fwd is None:
            self.t_grad_fwd = self._t0

    def _post(self, module: Any, args: Any, output: Any) -> None:
        if self._t0 is None:
            return
        if not self._torch.is_grad_enabled():
            dt_ = time.perf_counter() - self._t0
            if self.t_grad_fwd is None:
                self.nograd_rollout += dt_
            else:
                self.nograd_after += dt_
        else:  # every output tensor with grad (logits, or TRL's fused-head log_probs / entropy)
            values = output.values() if hasattr(output, "values") else [output]
            for v in values:
                if self._torch.is_tensor(v) and v.requires_grad:
                    v.register_hook(self._bwd_start)
        self._t0 = None

    def _bwd_start(self, grad: Any) -> None:
        if self.t_bwd is None:
            self.t_bwd = time.perf_counter()

    def _grad_done(self, param: Any) -> None:
        self.t_grad_done = time.perf_counter()

    def end_step(self, timed: dict[str, float]) -> dict[str, float]:
        """The step's phases (``timed``: seconds measured by the caller, e.g. ``score``)."""
        end = time.perf_counter()
        grad_fwd = self.t_grad_fwd or end
        bwd = self.t_bwd or grad_fwd
        score = timed.get("score", 0.0)
        return {
            "generate": self.nograd_rollout,
            "score": score,
            "rollout_other": max(0.0, grad_fwd - self.t_step - self.nograd_rollout - score),
            "logp_nograd": self.nograd_after,
            "forward": bwd - grad_fwd,
            "backward": max(0.0, (self.t_grad_done or bwd) - bwd),
        }


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import torch
    from datasets import Dataset
    from omegaconf import OmegaConf
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from papo.data.synthetic import synthetic_corpus
    from papo.models.loading import load_policy
    from papo.pipeline import resolve_model_dir

    cfg = compose(our_overrides(args, "grpo"))
    torch.manual_seed(args.seed)
    model_dir = resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus)
    m = OmegaConf.to_container(cfg.model, resolve=True)
    model, processor = load_policy(
        str(model_dir),
        dtype=m["dtype"],
        attn_implementation=m["attn_implementation"],
        gradient_checkpointing=False,
        min_pixels=m.get("min_pixels"),
        max_pixels=m.get("max_pixels"),
    )
    batches = build_batches(args)
    rows = [
        {"prompt": [{"role": "user", "content": p}], "images": imgs, "answer": a}
        for b in batches
        for p, imgs, a in zip(b["prompt"], b["images"], b["answer"], strict=True)
    ]
    dataset = Dataset.from_list(rows)
    r = cfg.rollout
    n = args.prompts * args.group_size

    clock = Clock()

    def bench_reward_fn(completions: list, answer: list, **_: Any) -> list[float]:
        """The benchmark reward through TRL's public reward-function interface; its time is ``score``."""
        t0 = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = [bench_reward(t, a, args.reward) for t, a in zip(texts, answer, strict=True)]
        clock.add("score", time.perf_counter() - t0)
        return out

    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        use_vllm=False,
        bf16=False,
        fp16=False,
        loss_type="dapo",
        beta=0.0,
        epsilon=cfg.algo.clip_low,
        epsilon_high=cfg.algo.clip_high,
        num_iterations=1,
        num_generations=args.group_size,
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        max_completion_length=args.max_new_tokens,
        generation_kwargs={"min_new_tokens": args.max_new_tokens},
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.optim.grad_clip,
        max_steps=len(batches),
        # TRL's configs default to gradient checkpointing ON: off, like ours (no recompute)
        activation_checkpointing=False,
        shuffle_dataset=False,
        mask_truncated_completions=False,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        log_completions=False,
        dataloader_num_workers=0,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[bench_reward_fn],
        args=config,
        train_dataset=dataset,
        processing_class=processor,
    )
    phases = ModelPhaseHooks(model)  # public torch hooks on our model; TRL's own methods stay untouched

    class StepClock(TrainerCallback):  # transformers' public callback events
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            clock.start()
            phases.begin_step()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.end(phases.end_step(clock.pop()))

    trainer.add_callback(StepClock())
    if getattr(model, "is_activation_checkpointing", False) or getattr(
        model, "is_gradient_checkpointing", False
    ):
        raise RuntimeError("TRL turned gradient checkpointing on: the sides would not do equal work")
    rss_setup = psutil.Process().memory_info().rss
    trainer.train()
    import trl

    return {
        "step_s": clock.steps,
        "phases": [finish_phases(s, p) for s, p in zip(clock.steps, clock.phases, strict=True)],
        "rss_setup": rss_setup,
        "model_dir": str(model_dir),
        "trl_version": trl.__version__,
        **flop_info(model, processor, batches, args, masked_forward=False),
    }


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run_trl(args) if args.side == "trl" else run_ours(args, args.side)
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    res["torch_threads"] = torch.get_num_threads()
    Path(args.result).write_text(json.dumps(res))


# ==========================================================================================================
# A/B timing of one phase (scripts/bench_logprobs.py, scripts/bench_decode.py)
# ==========================================================================================================
#: --clock of the A/B scripts: wall time, or the process's CPU time (with --threads 1, the compute time alone:
#: on a machine shared with other jobs, time spent waiting for a core is not counted)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_times(runs: dict[str, Any], reps: int, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds of each zero-argument callable in ``runs`` (two of them), ``reps`` times each, interleaved
    A B B A ... in one process, so a drifting machine load hits both alike; ``clock``: a key of CLOCKS."""
    now = CLOCKS[clock]
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(reps):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = now()
            runs[name]()
            times[name].append(now() - t0)
    return times


def ab_setup(args: argparse.Namespace, model_name: str) -> tuple[Any, dict[str, Any]]:
    """Our GRPO module on ``model_name`` and the first batch of this benchmark's work (the A/B scripts)."""
    ns = argparse.Namespace(**{**vars(args), "model": model_name, "warmup": 0, "steps": 1, "lr": 1e-5})
    module, _ = build_module(ns, "grpo")
    return module, build_batches(ns)[0]


def run_ab_script(doc: str, stem: str, measure: Any, print_results: Any, add_args: Any = None) -> None:
    """The command line of an A/B script: its options (``add_args(parser)`` adds the script's own),
    ``measure(args, model) -> dict`` per model, ``print_results(args, results, threads)``, and the JSON
    ``logs/bench/<stem>-<time>.json`` (``--out``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if add_args is not None:
        add_args(ap)
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--reps", type=int, default=7, help="timed runs per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall", help="wall time, or process CPU time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.reps < 3:
        ap.error("--reps must be >= 3 for a median and quartiles")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(args, m) for m in args.models.split(",")]
    threads = torch.get_num_threads()
    print_results(args, results, threads)
    out = Path(args.out or ROOT / "logs" / "bench" / f"{stem}-{dt.datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join([f"scripts/{stem}.py", *sys.argv[1:]]),
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
        },
    }
    doc = {**header, "args": vars(args), "threads": threads, "results": results}
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")


def ab_summary(times: dict[str, list[float]], new: str, old: str) -> dict[str, Any]:
    """Medians, quartiles, the speed-up old / new (median seconds) and the raw times."""
    med = {k: statistics.median(v) for k, v in times.items()}
    quartiles = {k: statistics.quantiles(v, n=4) for k, v in times.items()}
    return {
        "median_s": med,
        "p25_p75_s": {k: [q[0], q[2]] for k, q in quartiles.items()},
        "speedup": med[old] / med[new],
        "raw_s": times,
    }


# ==========================================================================================================
# Driver: run the workers, summarise, print, save
# ==========================================================================================================
def summarise(runs: list[dict[str, Any]], args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """Pool the post-warm-up steps of every round of one (model, side); peak RSS is the largest round's."""
    steps = [x for r in runs for x in r["step_s"][args.warmup :]]
    phases = [x for r in runs for x in r["phases"][args.warmup :]]
    med = statistics.median(steps)
    q = statistics.quantiles(steps, n=4) if len(steps) >= 2 else [steps[0]] * 3
    tokens = args.prompts * args.group_size * args.max_new_tokens
    flops = runs[0]["flops"]
    floor_s = flops["total"] / rate
    return {
        "step_s_median": med,
        "step_s_p25": q[0],
        "step_s_p75": q[2],
        "step_s_min": min(steps),
        "step_s_max": max(steps),
        "steps_measured": len(steps),
        # one median per round (rounds alternate the sides' order): the spread of a ratio across rounds
        "round_medians_s": [statistics.median(r["step_s"][args.warmup :]) for r in runs],
        "response_tokens_per_s": tokens / med,
        "phase_s_median": {p: statistics.median(x[p] for x in phases) for p in PHASES},
        "peak_rss_mb": max(r["peak_rss"] for r in runs) / 2**20,
        "setup_rss_mb": max(r["rss_setup"] for r in runs) / 2**20,
        "flops_per_step": flops,
        "floor_s": floor_s,
        "mfu": floor_s / med,
        "params": runs[0]["params"],
    }


def print_table(results: dict[str, dict[str, dict]], rates: list[float], args: argparse.Namespace) -> None:
    rate = statistics.median(rates)
    print(
        f"\nfp32 matmul rate ({args.threads} threads, 2048x2048): {rate / 1e9:.1f} GFLOP/s (samples:", end=" "
    )
    print(", ".join(f"{r / 1e9:.1f}" for r in rates) + ")")
    print(
        f"work per step: {args.prompts} prompts x G={args.group_size} = {args.prompts * args.group_size} sequences, "
        f"{args.max_new_tokens} response tokens each (forced), images {args.image_size}px; "
        f"{args.rounds} rounds x {args.steps} measured steps (each after {args.warmup} warm-up), pooled"
    )
    head = (
        f"{'model':<6} {'side':<5} {'s/step':>7} {'p25-p75':>13} {'min-max':>13} {'tok/s':>7} {'floor s':>8} "
        f"{'MFU':>6} {'RSS MB':>7} | " + " ".join(f"{p[:8]:>8}" for p in PHASES)
    )
    print(head)
    print("-" * len(head))
    for model, sides in results.items():
        for side, s in sides.items():
            if "error" in s:
                print(f"{model:<6} {side:<5} FAILED: {s['error']}")
                continue
            ph = " ".join(f"{s['phase_s_median'][p]:>8.3f}" for p in PHASES)
            print(
                f"{model:<6} {side:<5} {s['step_s_median']:>7.3f} "
                f"{s['step_s_p25']:>6.3f}-{s['step_s_p75']:<6.3f} {s['step_s_min']:>6.3f}-{s['step_s_max']:<6.3f} "
                f"{s['response_tokens_per_s']:>7.0f} {s['floor_s']:>8.3f} {100 * s['mfu']:>5.1f}% "
                f"{s['peak_rss_mb']:>7.0f} | {ph}"
            )
    print("\nratios (throughput ours/TRL = TRL s/step / ours s/step; PAPO/GRPO = step time ratio):")
    for model, sides in results.items():
        print(f"  {model}: " + ("; ".join(ratio_parts(sides)) or "n/a"))


def ratio_parts(sides: dict[str, dict]) -> list[str]:
    """The headline ratios of one model's sides (throughput against TRL, PAPO's cost, memory, speed-ups)."""
    ok = {k: v for k, v in sides.items() if "error" not in v}
    med = {k: v["step_s_median"] for k, v in ok.items()}
    parts = []
    if "trl" in ok and "grpo" in ok:
        pairs = zip(ok["trl"]["round_medians_s"], ok["grpo"]["round_medians_s"], strict=False)
        by_round = ", ".join(f"{t / g:.2f}" for t, g in pairs)
        parts.append(f"GRPO/TRL throughput {med['trl'] / med['grpo']:.2f}x (by round: {by_round})")
        parts.append(f"peak RSS GRPO/TRL {ok['grpo']['peak_rss_mb'] / ok['trl']['peak_rss_mb']:.2f}")
    if "trl" in ok and "papo" in ok:
        parts.append(f"PAPO/TRL throughput {med['trl'] / med['papo']:.2f}x")
    if "grpo" in ok and "papo" in ok:
        parts.append(f"PAPO/GRPO step time {med['papo'] / med['grpo']:.2f}x")
    for side in ("grpo", "papo"):
        if side in ok and f"{side}_base" in ok:
            parts.append(f"{side.upper()} speed-ups bought {med[f'{side}_base'] / med[side]:.2f}x")
    return parts


SIDE_NAMES = {
    "trl": "TRL",
    "grpo": "ours GRPO",
    "papo": "ours PAPO",
    "grpo_base": "ours GRPO, speed-ups off",
    "papo_base": "ours PAPO, speed-ups off",
}


def format_markdown(report: dict[str, Any]) -> str:
    """The saved JSON of one benchmark run as the Markdown docs/performance.md shows (``--write-doc``)."""
    from papo.utils.provenance import describe_machine

    a, m = report["args"], report["machine"]
    rate = statistics.median(m["fp32_matmul_flops"])
    load = ", ".join(f"{x:.1f}" for x in m.get("load_avg") or [])
    lines = [
        f"`{report.get('command', 'python scripts/bench.py')}` on {report['date']}, commit {report['commit']}; "
        f"{describe_machine(m)}, load average at the end {load or '?'}; torch {report['versions']['torch']}, "
        f"transformers {report['versions']['transformers']}, trl {report['versions']['trl']}.",
        f"Work per step: {a['prompts']} prompts x G={a['group_size']} = {a['prompts'] * a['group_size']} sequences, "
        f"{a['max_new_tokens']} response tokens each (forced), {a['image_size']} px images; {a['rounds']} rounds x "
        f"{a['steps']} measured steps (after {a['warmup']} warm-up each), pooled; {a['threads']} torch threads; "
        f"fp32 matmul rate {rate / 1e9:.1f} GFLOP/s.",
        "",
        "| model | side | s/step (median) | p25-p75 | tok/s | floor s | MFU | peak RSS MB | "
        + " | ".join(p.replace("_", " ") for p in PHASES)
        + " |",
        "|" + " --- |" * (8 + len(PHASES)),
    ]
    for model, sides in report["results"].items():
        for side, r in sides.items():
            name = SIDE_NAMES.get(side, side)
            if "error" in r:
                lines.append(f"| {model} | {name} | failed: {r['error']} |" + " |" * (6 + len(PHASES)))
                continue
            ph = " | ".join(f"{r['phase_s_median'][p]:.3f}" for p in PHASES)
            lines.append(
                f"| {model} | {name} | {r['step_s_median']:.3f} | {r['step_s_p25']:.3f}-{r['step_s_p75']:.3f} | "
                f"{r['response_tokens_per_s']:.0f} | {r['floor_s']:.3f} | {100 * r['mfu']:.1f}% | "
                f"{r['peak_rss_mb']:.0f} | {ph} |"
            )
    lines.append("")
    lines += [
        f"- {model}: " + ("; ".join(ratio_parts(sides)) or "n/a")
        for model, sides in report["results"].items()
    ]
    return "\n".join(lines) + "\n"


def write_doc(report: dict[str, Any], doc: Path, section: str) -> None:
    """Replace ``section`` of ``doc`` (between its markers) by the report's table (papo.utils.provenance)."""
    from papo.utils.provenance import replace_section

    replace_section(doc, section, format_markdown(report))
    print(f"wrote the '{section}' section of {doc}")


def git_commit() -> str:
    """HEAD's hash, ``-dirty`` with local changes (papo.utils.provenance; also used by scripts/bench_gpu.sh)."""
    from papo.utils.provenance import git_commit as head_commit

    return head_commit()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--models", default="tiny,small", help="comma list of embedded sizes: tiny,small")
    ap.add_argument(
        "--sides",
        default=",".join(SIDES),
        help="comma list of: trl,grpo,papo (+ grpo_base,papo_base: ours with the speed-ups of docs/performance.md off)",
    )
    ap.add_argument("--skip-trl", action="store_true", help="drop the TRL side (e.g. TRL not installed)")
    ap.add_argument("--steps", type=int, default=6, help="measured steps per round (rounds x steps >= 5)")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and discarded")
    ap.add_argument(
        "--rounds", type=int, default=3, help="worker runs per side, in alternating order (steps are pooled)"
    )
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=4, help="G, responses per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="response length (forced on every side)")
    ap.add_argument("--image-size", type=int, default=112, help="synthetic image side in px (112: 16 tokens)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per worker")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument(
        "--reward", default="math_jitter", choices=["math_jitter", "hash"], help="see bench_reward"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default logs/bench/bench-<time>.json)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    ap.add_argument(
        "--write-doc",
        type=Path,
        default=None,
        help="Markdown file whose --section to replace by this run's table (e.g. docs/performance.md)",
    )
    ap.add_argument("--section", default="bench_cpu_full", help="marker name of that section")
    ap.add_argument("--from-json", type=Path, default=None, help="no measurement: the table of a saved JSON")
    # internal: worker mode
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        worker(args)
        return
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        print(format_markdown(report))
        if args.write_doc:
            write_doc(report, args.write_doc, args.section)
        return

    import torch

    torch.set_num_threads(args.threads)
    sides = [s for s in args.sides.split(",") if s and not (args.skip_trl and s == "trl")]
    unknown = sorted(set(sides) - set(SIDES) - set(BASE_SIDES))
    if unknown:
        ap.error(f"unknown sides {unknown}; valid: {list(SIDES + BASE_SIDES)}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "logs" / "bench" / f"bench-{stamp}.json"
    log_dir = out.with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)
    rates = [matmul_rate()]
    raw: dict[str, dict[str, Any]] = {}
    for model in args.models.split(","):
        raw[model] = {side: [] for side in sides}
        for rnd in range(
            args.rounds
        ):  # alternate the order so slow drifts of the machine hit every side alike
            for side in sides if rnd % 2 == 0 else sides[::-1]:
                if raw[model][side] and "error" in raw[model][side][-1]:
                    continue
                name = f"{model}-{side}-r{rnd}"
                result, log = log_dir / f"{name}.json", log_dir / f"{name}.log"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model", model]
                cmd += ["--result", str(result), "--seed", str(args.seed), "--reward", args.reward]
                for k in (
                    "steps",
                    "warmup",
                    "prompts",
                    "group_size",
                    "max_new_tokens",
                    "image_size",
                    "threads",
                    "lr",
                ):
                    cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
                print(f"[bench] {name} ... (log: {log})", flush=True)
                t0 = time.perf_counter()
                with open(log, "w") as fh:
                    try:
                        rc = subprocess.run(
                            cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout
                        ).returncode
                    except subprocess.TimeoutExpired:
                        rc = "timeout"
                if rc != 0 or not result.is_file():
                    tail = log.read_text().strip().splitlines()[-15:]
                    print(f"[bench] {name} failed (rc={rc}):\n  " + "\n  ".join(tail), flush=True)
                    raw[model][side].append({"error": f"rc={rc}; see {log}"})
                    continue
                raw[model][side].append(json.loads(result.read_text()))
                print(f"[bench] {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
            rates.append(matmul_rate())
    rate = statistics.median(rates)
    summary = {
        m: {
            s: (
                {"error": runs[-1]["error"]}
                if any("error" in r for r in runs)
                else summarise(runs, args, rate)
            )
            for s, runs in sides_.items()
        }
        for m, sides_ in raw.items()
    }
    print_table(summary, rates, args)
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "threads": args.threads,
            "fp32_matmul_flops": rates,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl_version,
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("side", "model", "result")},
        "results": summary,
        "raw": raw,
    }
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nsaved {out}")
    if args.write_doc:
        write_doc(report, args.write_doc, args.section)


if __name__ == "__main__":
    main()
