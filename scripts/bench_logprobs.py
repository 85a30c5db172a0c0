#!/usr/bin/env python
"""A/B benchmark of the log-prob pass: each distinct image encoded once vs once per row (G times).

    python scripts/bench_logprobs.py                      # tiny and small, 8 prompts x G=4, 64 tokens
    python scripts/bench_logprobs.py --models small --reps 9 --threads 1

One rollout batch of ``scripts/bench.py``'s work (same models, prompts, 112 px images, forced response length)
is generated once; then the log-prob forward + backward that every RL update runs
(``papo.models.logprobs.response_logps`` on the whole batch, one micro-batch) is timed with the batch as
``collate_visual`` builds it (``shared``: each prompt's image through the vision tower once, its features
given to the G rows) and with every row's pixels (``per_row``: what the model's own forward does, and what
this code did before). The two are interleaved (A B B A ...) in one process, so a drifting machine load hits
both alike; it reports medians, the ratio, and the vision-tower patch rows per pass. It also checks that
both give the same log-probs. JSON: ``logs/bench/bench_logprobs-<time>.json``.

This isolates one phase; ``scripts/bench.py --sides grpo,grpo_base`` measures whole steps.
"""

from __future__ import annotations

import argparse
from typing import Any

import bench  # scripts/bench.py (this directory); it puts src/ on the path


def measure(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Median seconds of forward + backward for both batch layouts on ``model_name``."""
    import torch

    from papo.models.logprobs import per_row_visual, response_logps

    module, batch = bench.ab_setup(args, model_name)
    policy = module.policy
    cfg = module._gen_cfg(train=True)
    torch.manual_seed(args.seed)
    exp, _ = module.generator.rollout(policy, batch, cfg, module.reward_fn)
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
            {"shared": lambda: run(shared), "per_row": lambda: run(per_row)}, args.reps
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


def print_results(args: argparse.Namespace, results: list[dict[str, Any]], threads: int) -> None:
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


if __name__ == "__main__":
    bench.run_ab_script(__doc__, "bench_logprobs", measure, print_results)
