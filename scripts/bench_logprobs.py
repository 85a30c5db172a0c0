#!/usr/bin/env python
"""A/B benchmark of the log-prob pass: images encoded once vs once per row, or the chunked LM head vs full logits.

    python scripts/bench_logprobs.py                      # tiny and small, 8 prompts x G=4, 64 tokens
    python scripts/bench_logprobs.py --models small --reps 9 --threads 1
    python scripts/bench_logprobs.py --ab head            # chunked LM head vs the full-logits forward

One rollout batch of ``scripts/bench.py``'s work (same models, prompts, 112 px images, forced response length)
is generated once; then the log-prob forward + backward that every RL update runs
(``papo.models.logprobs.response_logps`` on the whole batch, one micro-batch) is timed two ways, interleaved
(A B B A ...) in one process, so a drifting machine load hits both alike; it reports medians, the ratio, and
checks that both give the same log-probs. ``--ab images`` (default): the batch as ``collate_visual`` builds it
(``shared``: each prompt's image through the vision tower once, its features given to the G rows) against
every row's pixels (``per_row``: what the model's own forward does), with the vision-tower patch rows per
pass. ``--ab head``: the LM head on ``--chunk-tokens`` response tokens at a time with recomputation in backward
(``chunked``) against the model's forward with (N, T, V) logits (``full``).
JSON: ``logs/bench/bench_logprobs-<time>.json``.

This isolates one phase; ``scripts/bench.py --sides grpo,grpo_base`` measures whole steps.
"""

from __future__ import annotations

import argparse
from typing import Any

import bench  # scripts/bench.py (this directory); it puts src/ on the path


def measure(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Median seconds of forward + backward for both variants on ``model_name``."""
    if args.ab == "head":
        return measure_head(args, model_name)
    import torch

    from papo.models.logprobs import per_row_visual, response_logps

    module, batch = bench.ab_setup(args, model_name)
    policy = module.policy
    cfg = module.source.generation_config()
    torch.manual_seed(args.seed)
    exp, _ = module.source.generator.rollout(policy, batch, cfg, module.source.reward_fn)
    shared = exp.model_inputs()
    per_row = {**shared, "visual": per_row_visual(shared["visual"])}
    patch_rows: list[int] = []
    hook = policy.model.visual.register_forward_hook(lambda m, a, o: patch_rows.append(int(a[0].shape[0])))

    def run(inputs: dict) -> torch.Tensor:
        policy.zero_grad(set_to_none=True)
        logps = response_logps(policy, **inputs)
        logps.sum().backward()
        return logps.detach()

    try:
        a = run(shared)  # warm-up, and the equality check
        b = run(per_row)
        rows = {"shared": patch_rows[0], "per_row": patch_rows[1]}
        times = bench.interleaved_times(
            {"shared": lambda: run(shared), "per_row": lambda: run(per_row)}, args.reps, args.clock
        )
    finally:
        hook.remove()
    return {
        "model": model_name,
        "params": sum(p.numel() for p in policy.parameters()),
        "rows": len(exp),
        "response_tokens": int(exp.response_mask.sum()),
        "vision_patch_rows_per_pass": rows,
        "max_abs_logp_diff": float((a - b).abs().max()),
        **bench.ab_summary(times, new="shared", old="per_row"),
    }


def measure_head(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Median seconds of forward + backward with the chunked LM head and with the full logits."""
    import torch

    from papo.models.logprobs import response_logps

    module, batch = bench.ab_setup(args, model_name)
    policy = module.policy
    torch.manual_seed(args.seed)
    exp, _ = module.source.generator.rollout(
        policy, batch, module.source.generation_config(), module.source.reward_fn
    )
    inputs = {**exp.model_inputs(), "suppress_ids": module.source.suppress_ids}

    def run(chunk: int | None) -> torch.Tensor:
        policy.zero_grad(set_to_none=True)
        logps = response_logps(policy, **inputs, chunk_tokens=chunk)
        logps.sum().backward()
        return logps.detach()

    a, b = run(args.chunk_tokens), run(None)  # warm-up, and the equality check
    times = bench.interleaved_times(
        {"chunked": lambda: run(args.chunk_tokens), "full": lambda: run(None)}, args.reps, args.clock
    )
    return {
        "model": model_name,
        "params": sum(p.numel() for p in policy.parameters()),
        "rows": len(exp),
        "response_tokens": int(exp.response_mask.sum()),
        "chunk_tokens": args.chunk_tokens,
        "max_abs_logp_diff": float((a - b).abs().max()),
        **bench.ab_summary(times, new="chunked", old="full"),
    }


def print_results(args: argparse.Namespace, results: list[dict[str, Any]], threads: int) -> None:
    if args.ab == "head":
        print(
            f"log-prob forward + backward, chunked LM head ({args.chunk_tokens} tokens) vs full logits, "
            f"{args.prompts} prompts x G={args.group_size}, {args.max_new_tokens} tokens, {threads} thread(s), "
            f"{args.reps} interleaved reps"
        )
        print(f"{'model':<6} {'chunked s':>10} {'full s':>9} {'speed-up':>9} {'max |dlogp|':>12}")
        for r in results:
            m = r["median_s"]
            print(
                f"{r['model']:<6} {m['chunked']:>10.4f} {m['full']:>9.4f} {r['speedup']:>8.2f}x "
                f"{r['max_abs_logp_diff']:>12.2e}"
            )
        return
    print(
        f"log-prob forward + backward, {args.prompts} prompts x G={args.group_size}, {args.max_new_tokens} tokens, "
        f"{args.image_size} px, {threads} thread(s), {args.reps} interleaved reps"
    )
    print(
        f"{'model':<6} {'shared s':>9} {'per-row s':>10} {'speed-up':>9} {'patch rows shared/per-row':>27} {'max |dlogp|':>12}"
    )
    for r in results:
        pr = r["vision_patch_rows_per_pass"]
        print(
            f"{r['model']:<6} {r['median_s']['shared']:>9.4f} {r['median_s']['per_row']:>10.4f} "
            f"{r['speedup']:>8.2f}x {pr['shared']:>13d} / {pr['per_row']:<11d} {r['max_abs_logp_diff']:>12.2e}"
        )


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--ab", choices=["images", "head"], default="images", help="variants to compare")
    ap.add_argument("--chunk-tokens", type=int, default=2048, help="--ab head: tokens per LM-head chunk")


if __name__ == "__main__":
    bench.run_ab_script(__doc__, "bench_logprobs", measure, print_results, add_args)
