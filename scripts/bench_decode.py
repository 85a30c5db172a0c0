#!/usr/bin/env python
"""A/B benchmark of the rollout decode loop: ``lean`` vs Hugging Face ``generate``, or ``static`` vs ``lean``.

    python scripts/bench_decode.py                        # tiny and small, 8 prompts x G=4, 64 tokens
    python scripts/bench_decode.py --models small --reps 9 --threads 1
    python scripts/bench_decode.py --ab static            # the static-cache loop vs the lean loop

One rollout chunk of ``scripts/bench.py``'s work (same models, prompts, 112 px images, G, forced response
length via ``min_new_tokens``, T = 1.0, top-p 0.99, as the training rollouts call it: one row per prompt and
``num_return_sequences = G``) is decoded by two loops, interleaved (A B B A ...) in one process; it reports
medians, the speed-up and response tokens per second, and checks that greedy decoding gives the same tokens
on both. ``--ab generate`` (default): ``papo.rollout.lean_decode.lean_generate`` against
``papo.rollout.hf_generate.hf_generate``. ``--ab static``: ``papo.rollout.static_decode.static_generate``
(on a GPU its CUDA-graph replay, on CPU the static cache step by step) against the lean loop: on CPU this is
the measurement behind ``rollout.decoder=auto`` choosing the lean loop there (docs/gpu_performance.md).
``--ab static_compiled``: the same with the step compiled by ``torch.compile`` (its compilation happens in
the warm-up, outside the timed runs).
JSON: ``logs/bench/bench_decode-<time>.json``.

This isolates one phase; ``scripts/bench.py`` measures whole steps (``--sides grpo,grpo_base`` for the step
with all of docs/performance.md's speed-ups off).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import bench  # scripts/bench.py (this directory); it puts src/ on the path

#: --ab: (new loop, old loop) compared
PAIRS = {
    "generate": ("lean", "generate"),
    "static": ("static", "lean"),
    "static_compiled": ("static_compiled", "lean"),
}


def measure(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Median seconds of one rollout chunk's decode with each loop on ``model_name``."""
    import torch

    from papo.rollout.hf_generate import GenerationConfig, hf_generate
    from papo.rollout.lean_decode import lean_generate
    from papo.rollout.static_decode import static_generate

    loops = {
        "lean": lean_generate,
        "generate": hf_generate,
        "static": static_generate,
        "static_compiled": functools.partial(static_generate, compile_step=True),
    }
    new, old = PAIRS[args.ab]
    module, batch = bench.ab_setup(args, model_name)
    policy, gen = module.policy.eval(), module.source.generator
    enc, per_visual, _ = gen.encode(batch, masked=False)
    inputs = dict(enc)  # one row per prompt, as the rollout passes whole groups
    inputs["pixel_values"] = torch.cat([v["pixel_values"] for v in per_visual])
    inputs["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in per_visual])
    if torch.cuda.is_available():
        policy.cuda()
        inputs = {k: v.cuda() for k, v in inputs.items()}
    G, T = args.group_size, args.max_new_tokens
    cfg = GenerationConfig(T, 1.0, 0.99, 0, G, min_new_tokens=T)
    special = (gen.eos_ids, gen.pad_id, gen.suppress_ids, G)

    greedy = GenerationConfig(T, 0.0, 1.0, 0, 1)
    same_greedy = torch.equal(
        loops[new](policy, inputs, greedy, *special[:3])[0],
        loops[old](policy, inputs, greedy, *special[:3])[0],
    )
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def run(name: str) -> Any:
        out = loops[name](policy, inputs, cfg, *special)
        sync()
        return out

    runs = {new: lambda: run(new), old: lambda: run(old)}
    for fn in runs.values():  # warm-up (and, on a GPU, the graph capture)
        ids, _ = fn()
    times = bench.interleaved_times(runs, args.reps, args.clock)
    out = bench.ab_summary(times, new=new, old=old)
    return {
        "model": model_name,
        "pair": [new, old],
        "params": sum(p.numel() for p in policy.parameters()),
        "rows": int(ids.shape[0]),
        "response_tokens": int(ids.numel()),
        "greedy_tokens_identical": bool(same_greedy),
        "tokens_per_s": {k: ids.numel() / v for k, v in out["median_s"].items()},
        **out,
    }


def print_results(args: argparse.Namespace, results: list[dict[str, Any]], threads: int) -> None:
    new, old = PAIRS[args.ab]
    print(
        f"rollout decode, {args.prompts} prompts x G={args.group_size}, {args.max_new_tokens} forced tokens, "
        f"T=1.0 top-p 0.99, {args.image_size} px, {threads} thread(s), {args.reps} interleaved reps"
    )
    print(
        f"{'model':<6} {new + ' s':>9} {old + ' s':>11} {'speed-up':>9} {new + ' tok/s':>13} {'greedy same':>12}"
    )
    for r in results:
        m = r["median_s"]
        print(
            f"{r['model']:<6} {m[new]:>9.4f} {m[old]:>11.4f} {r['speedup']:>8.2f}x "
            f"{r['tokens_per_s'][new]:>13.0f} {r['greedy_tokens_identical']!s:>12}"
        )


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--ab", choices=list(PAIRS), default="generate", help="loops to compare (new vs old)")


if __name__ == "__main__":
    bench.run_ab_script(__doc__, "bench_decode", measure, print_results, add_args)
