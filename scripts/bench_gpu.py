#!/usr/bin/env python
"""The prepared GPU check: correctness of the GPU paths, then today's path and the new one side by side.

    bash scripts/bench_gpu.sh                 # on one H200 (< 8 min, offline): JSON to $OUT/bench_gpu.json
    bash scripts/bench_gpu.sh --tiny          # CPU dry run of the same code (tiny dims; part of the tests)
    python scripts/bench_gpu_report.py JSON   # regenerate docs/gpu_performance.md's table from the JSON

What runs, in this order (each part guarded: an exception is recorded in the JSON and the run goes on; the
JSON is rewritten after every part, so a run cut short still leaves everything it measured):

1. correctness (seconds): on the tiny Qwen2.5-VL and Qwen3-VL stand-ins in fp32 on the GPU, the CUDA-graph
   decode's greedy and seeded-sampling tokens against the eager static-cache loop and the lean loop, and the
   chunked LM head's log-probs and gradients against the full-logits forward; on the 3B-dims model in bf16, the
   graph decode against the lean loop, the sampler's log-probs against the training forward's (on-policy), and
   chunked vs full log-probs, gradients and peak memory of one log-prob forward + backward; and the
   diagnostics of scripts/bench_gpu_diagnostics.py: ``sdpa_nan`` (the (b) NaN: one (b)-shaped micro-batch's
   forward + backward per SDPA backend, with and without left padding, finite-checked per layer),
   ``decode_split`` (a decode token at 32 rows split into replay, step rule and prefill share; after the
   runs, while the budget lasts, ``decode_split_compiled``: the same for the step compiled by torch.compile,
   with its compile time),
   ``sampling_cost`` on flat and peaked logits, ``backward_profile`` (one micro-batch's forward and backward
   timed and profiled, top operators);
2. RL steps of our module (``bench.measure_module``: the ``PapoModule`` under a minimal Lightning trainer),
   on a random-init model with Qwen2.5-VL-3B's dimensions in bf16 with activation checkpointing, the synthetic
   task with 448 px images, forced response lengths, for two workloads, each as the GRPO/DAPO step and the
   PAPO step, with today's path (``old``: lean decode loop, full-logits log-probs, 8 rows per micro-batch) and
   the new one (``new``: static cache + CUDA graph decode, chunked LM head, token-budget micro-batches):
   (a) 8 prompts x G=4, 256 tokens; (b) 32 prompts x G=8 = 256 rows, 512 tokens; the new path's GRPO step
   on (a) with the decode step compiled by torch.compile (``new-compiled``: ``rollout.decoder=static_compiled``)
   and with fp32 master weights under ``bf16-mixed`` (``new-fp32``). Per run: seconds per step
   and per phase, decode ms per token (the generate phase / max_new_tokens, prefill and sampling included),
   response tokens per second of the whole step, peak GPU memory, MFU (model FLOPs per step, as
   scripts/bench.py counts them, / step time / --peak-tflops, and / a measured bf16 matmul rate), and whether
   the decode really replayed CUDA graphs (or fell back, with the reason).

A time budget (``--budget-s``, from the start, setup included) stops starting new runs: each run needs an
estimated time left (its own, from the runs before it), and the runs are ordered by importance: (b)'s new
path before today's path on (b) (the slowest), which runs last and is skipped (saying so in the JSON) when
the budget is spent.

The model: papo.models.tiny_vlm's builder (real ``Qwen2_5_VLForConditionalGeneration`` classes, the embedded
stand-in's processor and 512-id tokenizer) with the published 3B values (text hidden 2048, 36 layers, 16 heads,
2 KV heads, MLP 11008, tied vocabulary 151,936, M-RoPE [16, 24, 24]; vision depth 32, hidden 1280, MLP 3420, 16
heads, window 112, full attention in blocks 7/15/23/31). Ids beyond the tokenizer are suppressed in sampling
(like the real model's padded ids), so the LM head keeps its 151,936-wide cost.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402  (scripts/bench.py: FLOP accounting, data, module driver; puts src/ on the path)
import bench_gpu_diagnostics as diagnostics  # noqa: E402

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

#: the two workloads (issue 16): today's (a) and a realistic batch (b)
CASES = {
    "a": {"prompts": 8, "group_size": 4, "max_new_tokens": 256},
    "b": {"prompts": 32, "group_size": 8, "max_new_tokens": 512},
}
TINY_CASES = {
    "a": {"prompts": 2, "group_size": 2, "max_new_tokens": 8},
    "b": {"prompts": 4, "group_size": 2, "max_new_tokens": 12},
}
#: config overrides of today's path and the new one
PATHS = {
    "old": [
        "rollout.decoder=lean",
        "algo.logprob_chunk_tokens=null",
        "algo.micro_batch_tokens=null",
        "algo.micro_batch_size=8",
    ],
    "new": [
        "rollout.decoder=static",
        "algo.logprob_chunk_tokens=4096",
        "algo.micro_batch_tokens=16384",
        "algo.micro_batch_size=64",
    ],
}
#: the new path with the decode step compiled by torch.compile before its capture
PATHS["new-compiled"] = [
    "rollout.decoder=static_compiled" if o == "rollout.decoder=static" else o for o in PATHS["new"]
]
#: seconds a run on the new-compiled path needs beyond the new path's (Inductor compiling the 3B step)
COMPILE_S = 120.0
#: runs of the new path with fp32 master weights under Lightning's bf16-mixed autocast (the published configs'
#: default; the other runs hold bf16 weights): path name -> (the path whose overrides it runs, precision)
AUTOCAST_PATHS = {"new-fp32": ("new", "bf16-mixed")}
#: (case, path, side, warm-up steps, measured steps), most important first: (b)'s new path before today's
#: path on (b); a (b) step takes about 40 s, so (b)'s runs measure one step each within the 8 minutes, and
#: today's path, which captures nothing, runs without a warm-up step (the new path's runs warmed the kernels)
PLAN = [
    ("a", "new", "grpo", 1, 2),
    ("a", "new", "papo", 1, 2),
    ("a", "old", "grpo", 0, 1),
    ("b", "new", "grpo", 1, 1),
    ("b", "new", "papo", 0, 1),
    ("a", "new-compiled", "grpo", 1, 2),
    ("a", "new-fp32", "grpo", 1, 1),
    ("a", "old", "papo", 0, 1),
    ("b", "old", "grpo", 0, 1),
    ("b", "old", "papo", 0, 1),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny dims, 1 step per run, CPU allowed (a dry run)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no new run after this (from start)")
    ap.add_argument("--runs", default="all", help="comma list of case/path/side to run (default: the plan)")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--checks", default="all", help="comma list of correctness parts to run (default: all)")
    ap.add_argument("--new-extra", nargs="*", default=[], help="more overrides of the new path (key=value)")
    ap.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps of every run (default: the plan's)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="measured steps of every run (default: the plan's)"
    )
    ap.add_argument("--image-size", type=int, default=448, help="square images, px (448: 256 image tokens)")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM)"
    )
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_gpu.json or logs/bench/)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.image_size = 56
    return args


class Report:
    """The JSON document, rewritten (atomically) after every part."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {**header, "correctness": {}, "runs": {}, "skipped": {}}

    def save(self) -> None:
        self.doc["wall_s"] = time.perf_counter() - T0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def guarded(self, section: str, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one part; its result (or its error and traceback) goes to ``doc[section][name]``."""
        t = time.perf_counter()
        print(f"[bench_gpu] {section}/{name} ...", flush=True)
        try:
            out: dict[str, Any] = fn()
            ok = True
        except Exception as err:  # one part failing must not hide the others
            out = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
            ok = False
            print(f"[bench_gpu] {section}/{name} FAILED: {out['error']}", flush=True)
        out["seconds"] = round(time.perf_counter() - t, 2)
        self.doc[section][name] = out
        self.save()
        if ok:
            brief = {k: v for k, v in out.items() if not isinstance(v, (dict, list))}
            print(f"[bench_gpu] {section}/{name}: {brief}", flush=True)
        return out if ok else None


# ==========================================================================================================
# set-up
# ==========================================================================================================
def machine(device: Any) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count
        )
    else:
        info["gpu"] = None
    return info


def build_policy(args: argparse.Namespace, tokenizer: Any, device: Any, dtype: Any = None) -> Any:
    """Random-init Qwen2.5-VL with the 3B dims (tiny dims with --tiny), ``dtype`` (default bf16, fp32 on CPU),
    on ``device``."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from papo.models.tiny_vlm import build_config, resolve_spec

    spec = resolve_spec("tiny") if args.tiny else resolve_spec("tiny", **QWEN25_VL_3B)
    config = build_config(spec, tokenizer)
    vocab = 1024 if args.tiny else VOCAB_3B  # padded output vocabulary (ids >= len(tokenizer) suppressed)
    config.text_config.vocab_size = vocab
    if hasattr(config, "vocab_size"):
        config.vocab_size = vocab
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=args.attn
        )
    model.to(device=device, dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = True
    return model


def workload(args: argparse.Namespace, case: str, warmup: int, steps: int) -> argparse.Namespace:
    """The namespace scripts/bench.py's helpers read for one workload."""
    sizes = (TINY_CASES if args.tiny else CASES)[case]
    return argparse.Namespace(
        model="tiny",  # the stand-in that provides tokenizer + processor; its weights are replaced
        reward="hash",  # no answer grading (math-verify need not be installed)
        grid=4,
        image_size=args.image_size,
        lr=1e-6,
        seed=args.seed,
        warmup=warmup,
        steps=steps,
        **sizes,
    )


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"model.dtype={'float32' if args.tiny else 'bfloat16'}",
        f"model.min_pixels={args.image_size**2}",
        f"model.max_pixels={args.image_size**2}",
        "rollout.max_prompt_length=4096",
        # a step whose gradient is not finite is skipped and counted (skipped_steps, nonfinite_grads in the
        # JSON), never the end of the measurement
        "optim.max_consecutive_skips=null",
    ]


def watch_nonfinite_grads(module: Any, sink: list[dict[str, Any]]) -> Callable[[], None]:
    """Record, for each optimiser step whose gradient norm is not finite, which parameters had NaN / inf
    gradients (the first 12 names and the counts); returns the function that stops watching."""
    import math

    import papo.models.papo_module as papo_module

    original = papo_module.clip_grad_norm
    names = {id(p): n for n, p in module.policy.named_parameters()}

    def watched(trainer: Any, params: Any, max_norm: float) -> Any:
        params = list(params)
        bad = [
            (names.get(id(p), "?"), bool(p.grad.isnan().any()), bool(p.grad.isinf().any()))
            for p in params
            if p.grad is not None and not bool(p.grad.isfinite().all())
        ]
        norm = original(trainer, params, max_norm)
        if norm is not None and not math.isfinite(float(norm)):
            sink.append(
                {
                    "params_nonfinite": len(bad),
                    "with_nan": sum(n for _, n, _ in bad),
                    "with_inf": sum(i for _, _, i in bad),
                    "first": [name for name, _, _ in bad[:12]],
                }
            )
        return norm

    papo_module.clip_grad_norm = watched
    return lambda: setattr(papo_module, "clip_grad_norm", original)


def attach(module: Any, policy: Any) -> None:
    """Give ``module`` the shared policy (its processor and tokenizer stay), suppressing padded vocabulary."""
    import torch

    from papo.models.loading import generation_suppress_token_ids, padded_vocab_ids

    module.policy = policy
    policy.train()
    vocab = (
        policy.config.text_config.vocab_size
    )  # never sampled: placeholder + padded rows; scored: all but padded
    module.source.generator.suppress_ids = generation_suppress_token_ids(module.processor, vocab)
    module.source.suppress_ids = torch.tensor(padded_vocab_ids(module.processor, vocab), dtype=torch.long)


def first_prompts(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` prompts of a data batch."""
    return {k: v[:n] if isinstance(v, list) else v for k, v in batch.items()}


def prompt_inputs(gen: Any, batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """Model inputs with one row per prompt, as a rollout chunk passes whole groups (``gen``: a Generator)."""
    import torch

    enc, per_visual, _ = gen.encode(batch, masked=False)
    inputs = dict(enc)
    inputs["pixel_values"] = torch.cat([v["pixel_values"] for v in per_visual])
    inputs["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in per_visual])
    return {k: v.to(device) for k, v in inputs.items()}


def graph_replays(policy: Any) -> list[tuple[Any, int]]:
    """Replays so far of each step graph the static decoder holds for ``policy``: (weak reference, count)."""
    from papo.rollout import static_decode

    return [(weakref.ref(g), g.replays) for g in static_decode.step_graphs(policy).values()]


def graph_status(policy: Any, since: list[tuple[Any, int]] | None = None) -> dict[str, Any]:
    """The step graphs the static decoder replayed for ``policy`` (since the ``graph_replays`` snapshot
    ``since``: graphs left from earlier runs that did not step again are left out), and why it fell back, if
    it did."""
    from papo.rollout import static_decode

    graphs = static_decode.step_graphs(policy)

    def earlier(g: Any) -> int:  # the graph's replays at the snapshot (0: built since)
        return next((n for ref, n in since or [] if ref() is g), 0)

    return {
        "graphs": {
            str(rows): {
                "length": g.length,
                "captured": g.graph is not None,
                "compiled": g.compiled is not None,
                "steps": g.replays - earlier(g),
            }
            for rows, g in graphs.items()
            if g.replays > earlier(g)
        },
        "fallback": static_decode._UNCAPTURABLE.get(policy) or static_decode.static_unsupported(policy),
    }


# ==========================================================================================================
# correctness
# ==========================================================================================================
def decode_parity(model: Any, inputs: dict, gen: Any, device: Any, tokens: int, G: int) -> dict[str, Any]:
    """Greedy and seeded-sampling tokens of the graph decode, the eager static loop and the lean loop."""
    import torch

    from papo.rollout.hf_generate import GenerationConfig
    from papo.rollout.lean_decode import lean_generate
    from papo.rollout.static_decode import static_generate

    special = (gen.eos_ids, gen.pad_id, gen.suppress_ids)
    greedy = GenerationConfig(max_new_tokens=tokens, temperature=0.0)
    cuda = device.type == "cuda"
    lean = lean_generate(model, inputs, greedy, *special, 1)[0]
    eager = static_generate(model, inputs, greedy, *special, 1, capture=False)[0]
    graph = static_generate(model, inputs, greedy, *special, 1, capture=cuda)[0]
    out: dict[str, Any] = {
        "rows": int(lean.shape[0]),
        "tokens": tokens,
        "greedy_graph_equals_eager": bool(torch.equal(graph, eager)),
        "greedy_graph_equals_lean": bool(torch.equal(graph, lean)),
        "greedy_token_agreement_graph_lean": float((graph == lean).float().mean())
        if graph.shape == lean.shape
        else None,
    }
    sampled = GenerationConfig(max_new_tokens=tokens, temperature=1.0, top_p=0.99, num_samples=G)
    torch.manual_seed(7)
    lean_s = lean_generate(model, inputs, sampled, *special, G)[0]
    torch.manual_seed(7)
    graph_s = static_generate(model, inputs, sampled, *special, G, capture=cuda)[0]
    out["sampled_graph_equals_lean"] = bool(torch.equal(graph_s, lean_s))
    out["sampled_token_agreement"] = (
        float((graph_s == lean_s).float().mean()) if graph_s.shape == lean_s.shape else None
    )
    out.update(graph_status(model))
    return out


def sampling_cost(vocab: int, device: Any, rows: tuple[int, ...] = (32, 256)) -> dict[str, Any]:
    """Milliseconds of the step rule outside the graph (suppression, top-p 0.99 sampling, pad, ended rows) per
    token, on random logits of the 3B vocabulary: the part of a decode token that is not the model's step.
    ``flat`` logits (standard normal, like a random-init model's) put every row's nucleus outside the top-p
    candidates (the whole vocabulary is sorted); ``peaked`` ones (probability ~ rank^-2, a trained model's
    shape) keep it among them."""
    import torch

    from papo.rollout.token_sampling import StepRules, next_tokens

    rules = StepRules(
        eos_ids=torch.tensor([1], device=device),
        pad_id=0,
        suppress=torch.arange(vocab // 2, vocab, device=device),
        top_p=0.99,
    )
    out = {}
    for n in rows:
        flat = torch.randn(n, vocab, device=device)
        ranks = torch.argsort(torch.rand(n, vocab, device=device), dim=-1).float() + 1  # a random order
        peaked = -2.0 * ranks.log()  # probability ~ rank^-2
        for name, logits in (("", flat), ("_peaked", peaked)):
            unfinished = torch.ones(n, dtype=torch.bool, device=device)
            for _ in range(3):
                next_tokens(logits.clone(), 5, unfinished, rules)
            reps = 20
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(reps):
                    next_tokens(logits.clone(), 5, unfinished, rules)
                end.record()
                torch.cuda.synchronize()
                out[f"ms_per_token_{n}_rows{name}"] = start.elapsed_time(end) / reps
            else:
                t = time.perf_counter()
                for _ in range(reps):
                    next_tokens(logits.clone(), 5, unfinished, rules)
                out[f"ms_per_token_{n}_rows{name}"] = 1000 * (time.perf_counter() - t) / reps
    return out


def on_policy_gap(module: Any, batch: dict[str, Any], decoder: str, device: Any, tokens: int) -> dict:
    """Max / mean |sampler log-prob - training forward's (chunked head) log-prob| over the sampled tokens."""
    import torch

    import papo.rollout.token_sampling as token_sampling
    from papo.models.logprobs import response_logps
    from papo.rollout.hf_generate import GenerationConfig

    seen: list = []
    original = token_sampling.filter_logits

    def recording(logits, *a):
        seen.append(logits.float().log_softmax(-1))
        return original(logits, *a)

    module.source.generator.decoder = decoder
    cfg = GenerationConfig(max_new_tokens=tokens, temperature=1.0, top_p=1.0, num_samples=2)
    token_sampling.filter_logits = recording
    try:
        torch.manual_seed(1)
        policy = module.policy.eval()
        exp, _ = module.source.generator.rollout(
            policy, first_prompts(batch, 4), cfg, module.source.reward_fn, device=device
        )
    finally:
        token_sampling.filter_logits = original
    steps = torch.stack(seen, dim=1).cpu()  # (N, T', V)
    T = steps.shape[1]
    sampled = steps.gather(-1, exp.response_ids[:, :T, None]).squeeze(-1)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in exp.model_inputs().items()}
    inputs["visual"] = {k: v.to(device) for k, v in inputs["visual"].items()}
    inputs["extra"] = {k: v.to(device) for k, v in inputs["extra"].items()}
    # scored over the sampler's own vocabulary (the placeholder is never sampled, the training scores exclude
    # only the padded rows): this compares the decode path's numbers with the training forward's
    suppress = torch.tensor(module.source.generator.suppress_ids, dtype=torch.long, device=device)
    with torch.no_grad():
        train = response_logps(policy, **inputs, suppress_ids=suppress, chunk_tokens=4096).float().cpu()
    live = exp.response_mask[:, :T].bool()
    gap = (sampled[live] - train[:, :T][live]).abs()
    return {"tokens_compared": int(live.sum()), "max_abs": float(gap.max()), "mean_abs": float(gap.mean())}


def logprob_parity(model: Any, exp: Any, suppress: Any, device: Any, chunk: int) -> dict[str, Any]:
    """Chunked vs full log-probs and gradients (and each pass's peak GPU memory) on one micro-batch."""
    import torch

    from papo.models.logprobs import chunked_head_supported, response_logps

    inputs = exp.model_inputs()
    inputs = {
        k: (v.to(device) if isinstance(v, torch.Tensor) else {a: b.to(device) for a, b in v.items()})
        for k, v in inputs.items()
    }
    params = [p for p in model.parameters() if p.requires_grad]

    def run(chunk_tokens: int | None) -> tuple[Any, list, float | None]:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        logps = response_logps(
            model, **inputs, temperature=1.0, suppress_ids=suppress, chunk_tokens=chunk_tokens
        )
        (logps * torch.linspace(0.5, 1.5, logps.shape[1], device=device)).sum().backward()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
        return logps.detach().float(), peak

    model.train()
    full, peak_full = run(None)
    g_full = [p.grad.detach().clone() if p.grad is not None else None for p in params]  # model dtype
    chunked, peak_chunked = run(chunk)
    num = den = 0.0
    for p, g in zip(params, g_full, strict=True):
        if g is not None and p.grad is not None:
            num += float((p.grad.float() - g.float()).pow(2).sum())
            den += float(g.float().pow(2).sum())
    model.zero_grad(set_to_none=True)
    mask = exp.response_mask.to(device).bool()
    return {
        "chunked_head_used": chunked_head_supported(model),
        "rows": len(exp),
        "response_tokens": int(mask.sum()),
        "logp_max_abs_diff": float((chunked - full)[mask].abs().max()),
        "grad_relative_diff": (num / den) ** 0.5 if den > 0 else None,
        "grads_compared": sum(g is not None for g in g_full),
        "peak_gib_full": peak_full,
        "peak_gib_chunked": peak_chunked,
    }


# ==========================================================================================================
# RL-step runs
# ==========================================================================================================
def measure_run(
    args: argparse.Namespace,
    policy: Any,
    case: str,
    path: str,
    side: str,
    warmup: int,
    steps: int,
    left: float,
) -> dict[str, Any]:
    import torch

    ns = workload(args, case, warmup, steps)
    batches = bench.build_batches(ns)
    runs_as, precision = AUTOCAST_PATHS.get(path, (path, None))
    overrides = PATHS[runs_as] + (args.new_extra if runs_as.startswith("new") else [])
    module, _ = bench.build_module(ns, side, base_overrides(args) + overrides)
    attach(module, policy)
    cuda = torch.cuda.is_available()
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    nonfinite: list[dict[str, Any]] = []
    replays = graph_replays(policy)
    unwatch = watch_nonfinite_grads(module, nonfinite)
    built: list[str] = []
    try:
        with diagnostics.trainer_precision(precision) if precision else contextlib.nullcontext([]) as built:
            step_s, phases = bench.measure_module(
                module, batches, "gpu" if cuda else "cpu", budget_s=left, decode_timing="decode_calls"
            )
    finally:
        unwatch()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    ran = batches[: max(len(step_s), warmup + 1)]
    flops = bench.flop_info(policy, module.processor, ran, ns, side == "papo")
    keep = step_s[warmup:] or step_s[-1:]
    kept = phases[warmup:] or phases[-1:]
    med = statistics.median(keep)
    tokens = ns.prompts * ns.group_size * ns.max_new_tokens
    phase_med = {p: statistics.median(x[p] for x in kept) for p in bench.PHASES}
    out = {
        "case": case,
        "path": path,
        "side": side,
        "weights_dtype": str(next(policy.parameters()).dtype),
        "precision": (built or [None])[0] or "weights' dtype (no autocast)",  # the trainer's own
        "rows": ns.prompts * ns.group_size,
        "max_new_tokens": ns.max_new_tokens,
        "overrides": overrides,
        "skipped_steps": int(module.skipped_steps),  # optimiser steps skipped (non-finite loss or gradient)
        "nonfinite_grads": nonfinite[:4],
        "step_s": step_s,
        "warmup_steps": warmup,
        "steps_measured": len(keep),
        "step_s_median": med,
        "phase_s_median": phase_med,
        "decode_ms_per_token": 1000 * phase_med["generate"] / ns.max_new_tokens,
        "response_tokens_per_s": tokens / med,
        "peak_gpu_mem_gib": peak,
        "flops_per_step": flops["flops"],
        "params": flops["params"],
        "model_tflops_per_s": flops["flops"]["total"] / med / 1e12,
        "mfu_vs_peak": flops["flops"]["total"] / med / (args.peak_tflops * 1e12),
    }
    if runs_as.startswith("new"):
        out["decode"] = graph_status(policy, replays)
    module.policy = None  # keep the shared policy alive, free this module's optimiser state
    del module
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def estimate_s(report: Report, case: str, path: str, side: str, warmup: int, steps: int) -> float:
    """Time a run needs, from the runs before it (the same run's other side, or the other workload scaled by
    its tokens); a generous default when nothing is known yet."""
    runs = report.doc["runs"]
    n = warmup + steps
    if path in AUTOCAST_PATHS:  # the path it runs, plus building its policy
        return estimate_s(report, case, AUTOCAST_PATHS[path][0], side, warmup, steps) + 15
    if path == "new-compiled" and not any("/new-compiled/" in key for key in runs):  # + compiling the step
        return estimate_s(report, case, "new", side, warmup, steps) + COMPILE_S
    for other in ("grpo", "papo"):
        prior = runs.get(f"{case}/{path}/{other}")
        if prior and "step_s_median" in prior:
            return 1.2 * n * prior["step_s_median"] + 5
    if case == "b":
        prior = runs.get(f"a/{path}/grpo")
        if prior and "step_s_median" in prior:
            a, b = CASES["a"], CASES["b"]
            scale = (b["prompts"] * b["group_size"] * b["max_new_tokens"]) / (
                a["prompts"] * a["group_size"] * a["max_new_tokens"]
            )
            return 0.6 * scale * n * prior["step_s_median"] + 10
    return 30.0 * n


def tiny_family_checks(family: str, batch: dict[str, Any], device: Any, reward_fn: Any) -> dict[str, Any]:
    """Decode parity and chunked-head parity on one embedded stand-in, fp32, on ``device``."""
    import torch

    from papo.models.loading import generation_suppress_token_ids, load_policy
    from papo.models.stand_in import ensure_stand_in
    from papo.rollout.collect import Generator
    from papo.rollout.hf_generate import GenerationConfig
    from papo.rollout.static_decode import release_graphs

    cache = Path(os.environ.get("PAPO_CACHE_DIR", ROOT / ".cache")) / "models"
    model, processor = load_policy(ensure_stand_in(family, cache), dtype="float32")
    model.to(device).eval()
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 64)
    small = first_prompts(batch, 2)
    tokens = 8 if device.type == "cpu" else 24
    out = {"decode": decode_parity(model, prompt_inputs(gen, small, device), gen, device, tokens, 4)}
    torch.manual_seed(0)
    cfg = GenerationConfig(max_new_tokens=tokens, temperature=1.0, num_samples=4)
    exp, _ = gen.rollout(model, small, cfg, reward_fn, device=device)
    suppress = torch.tensor(gen.suppress_ids, device=device)
    out["logprobs"] = logprob_parity(model, exp, suppress, device, chunk=7)
    release_graphs(model)
    return out


def correctness(report: Report, args: argparse.Namespace, probe: Any, batch: dict, device: Any) -> None:
    """Section 1: graph decode and chunked head against today's paths, tiny stand-ins then the 3B dims."""
    import torch

    from papo.rollout.hf_generate import GenerationConfig

    policy = probe.policy
    wanted = None if args.checks == "all" else set(args.checks.split(","))

    def check(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if wanted is None or name in wanted:
            report.guarded("correctness", name, fn)

    for family in ("qwen2_5_vl", "qwen3_vl"):
        check(f"tiny_{family}", lambda f=family: tiny_family_checks(f, batch, device, probe.source.reward_fn))

    def big_decode() -> dict[str, Any]:
        policy.eval()
        inputs = prompt_inputs(probe.source.generator, first_prompts(batch, 4), device)
        return decode_parity(policy, inputs, probe.source.generator, device, 8 if args.tiny else 32, 2)

    rollout: dict[str, Any] = {}

    def big_logprobs() -> dict[str, Any]:
        tokens = 8 if args.tiny else 512
        cfg = GenerationConfig(max_new_tokens=tokens, temperature=1.0, num_samples=2, min_new_tokens=tokens)
        torch.manual_seed(0)
        policy.eval()
        exp, _ = probe.source.generator.rollout(
            policy, first_prompts(batch, 4), cfg, probe.source.reward_fn, device=device
        )
        rollout["exp"] = exp
        # 1024-token chunks: the 4,096 response tokens span several chunks (recomputed in backward)
        return logprob_parity(policy, exp, probe.source.suppress_ids.to(device), device, chunk=1024)

    def split() -> dict[str, Any]:
        return decode_split(args, probe.source.generator, policy, batch, device, compiled=False)

    def profile() -> dict[str, Any]:
        exp = rollout["exp"]
        inputs = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else {a: b.to(device) for a, b in v.items()})
            for k, v in exp.model_inputs().items()
        }
        return diagnostics.backward_profile(
            policy, inputs, probe.source.suppress_ids.to(device), device, 4096
        )

    suppress = probe.source.suppress_ids.to(device)
    check("sdpa_nan", lambda: diagnostics.sdpa_nan(policy, suppress, device, args.tiny))
    check("3b_decode", big_decode)
    vocab = policy.config.text_config.vocab_size
    check("sampling_cost", lambda: sampling_cost(vocab, device))
    check("decode_split", split)
    tokens = 6 if args.tiny else 32
    check("3b_on_policy", lambda: on_policy_gap(probe, batch, "static", device, tokens))
    check("3b_logprobs", big_logprobs)
    if "exp" in rollout:
        check("backward_profile", profile)
    policy.train()


def decode_split(
    args: argparse.Namespace, generator: Any, policy: Any, batch: dict, device: Any, compiled: bool
) -> dict[str, Any]:
    """The decode split of 8 prompts x G=4 ((a)'s 32 rows), with the step compiled or not."""
    inputs = prompt_inputs(generator, first_prompts(batch, 8), device)
    tokens = 8 if args.tiny else 64
    return diagnostics.decode_split(policy, generator, inputs, device, tokens, 4, compiled)


def compiled_decode_check(
    report: Report, args: argparse.Namespace, generator: Any, policy: Any, batch: dict, device: Any
) -> None:
    """After the runs, while the budget lasts (compiling the 3B step takes the longest of the checks): the
    decode split of the compiled step, ``decode_split_compiled``."""
    name = "decode_split_compiled"
    if args.skip_correctness or (args.checks != "all" and name not in args.checks.split(",")):
        return
    left, need = args.budget_s - (time.perf_counter() - T0), COMPILE_S + 30
    if not args.tiny and left < need:
        report.doc["skipped"][name] = f"budget: {left:.0f} s left, about {need:.0f} s needed"
        report.save()
        return
    report.guarded(
        "correctness", name, lambda: decode_split(args, generator, policy, batch, device, compiled=True)
    )
    policy.train()


def runs(report: Report, args: argparse.Namespace, policy: Any, tokenizer: Any) -> None:
    """Section 2: the plan's RL-step runs, most important first, while the budget lasts."""
    wanted = None if args.runs == "all" else set(args.runs.split(","))
    for case, path_name, side, warmup, steps in PLAN:
        key = f"{case}/{path_name}/{side}"
        if wanted is not None and key not in wanted:
            continue
        if args.tiny:
            warmup, steps = 0, 1
        warmup = warmup if args.warmup is None else args.warmup
        steps = steps if args.steps is None else args.steps
        left = args.budget_s - (time.perf_counter() - T0)
        need = estimate_s(report, case, path_name, side, warmup, steps)
        if not args.tiny and left < need:
            report.doc["skipped"][key] = f"budget: {left:.0f} s left, about {need:.0f} s needed"
            report.save()
            print(f"[bench_gpu] skip {key}: {report.doc['skipped'][key]}", flush=True)
            continue
        run = (case, path_name, side, warmup, steps, left)
        if path_name in AUTOCAST_PATHS:
            report.guarded("runs", key, lambda run=run: measure_fp32_run(args, policy, tokenizer, *run))
        else:
            report.guarded("runs", key, lambda run=run: measure_run(args, policy, *run))


def measure_fp32_run(args: argparse.Namespace, shared: Any, tokenizer: Any, *run: Any) -> dict[str, Any]:
    """A run on a policy with fp32 weights (the same random init as the shared one), dropped afterwards."""
    import torch

    device = next(shared.parameters()).device
    policy = build_policy(args, tokenizer, device, dtype=torch.float32)
    try:
        return measure_run(args, policy, *run)
    finally:
        from papo.rollout.static_decode import release_graphs

        release_graphs(policy)
        del policy
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("bench_gpu: no CUDA device visible (torch.cuda.is_available() is False); --tiny runs on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    if args.out:
        path = Path(args.out)
    elif os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "bench_gpu.json"
    else:
        path = ROOT / "logs" / "bench" / f"bench_gpu-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    header = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": bench.git_commit(),
        "command": " ".join(["scripts/bench_gpu.py", *argv]),
        "machine": machine(device),
        "args": vars(args),
        "cases": TINY_CASES if args.tiny else CASES,
        "paths": PATHS,
    }
    report = Report(path, header)
    report.save()
    print(f"[bench_gpu] {header['machine']}; JSON: {path}", flush=True)
    rates = [bench.matmul_rate(n=8192, reps=10, dtype="bfloat16", device="cuda")] if cuda else []

    # a module for the processor and tokenizer (and the correctness checks), and the shared big policy
    ns = workload(args, "a", 0, 1)
    batch = bench.build_batches(ns)[0]
    probe, _ = bench.build_module(ns, "grpo", base_overrides(args) + PATHS["new"])
    built: dict[str, Any] = {}
    tokenizer = probe.processor.tokenizer

    def build() -> dict[str, Any]:
        built["policy"] = build_policy(args, tokenizer, device)
        return {"params": sum(p.numel() for p in built["policy"].parameters())}

    report.guarded("correctness", "build_policy", build)
    policy = built.get("policy")
    if policy is None:
        return
    attach(probe, policy)
    if not args.skip_correctness:
        correctness(report, args, probe, batch, device)
    probe.policy = None  # the probe's optimiser-free module is dropped; the policy is shared by the runs
    gc.collect()
    runs(report, args, policy, tokenizer)
    compiled_decode_check(report, args, probe.source.generator, policy, batch, device)

    if cuda:
        rates.append(bench.matmul_rate(n=8192, reps=10, dtype="bfloat16", device="cuda"))
    rate = statistics.median(rates) if rates else None
    report.doc["bf16_matmul_flops"] = rates
    for r in report.doc["runs"].values():
        if "model_tflops_per_s" in r:
            r["mfu_vs_measured_matmul"] = r["model_tflops_per_s"] * 1e12 / rate if rate else None
    report.save()
    print_summary(report.doc)
    print(f"[bench_gpu] saved {path} (total {time.perf_counter() - T0:.0f} s)", flush=True)


def print_summary(doc: dict[str, Any]) -> None:
    print(f"\n{'run':<12} {'s/step':>8} {'decode ms/tok':>14} {'tok/s':>8} {'peak GiB':>9} {'MFU':>6}")
    for key, r in doc["runs"].items():
        if "step_s_median" not in r:
            print(f"{key:<12} {r.get('error', '?')}")
            continue
        peak = f"{r['peak_gpu_mem_gib']:.1f}" if r["peak_gpu_mem_gib"] is not None else "-"
        print(
            f"{key:<12} {r['step_s_median']:>8.2f} {r['decode_ms_per_token']:>14.2f} "
            f"{r['response_tokens_per_s']:>8.0f} {peak:>9} {100 * r['mfu_vs_peak']:>5.1f}%"
        )
    for key, why in doc["skipped"].items():
        print(f"{key:<12} skipped ({why})")


if __name__ == "__main__":
    main(sys.argv[1:])
