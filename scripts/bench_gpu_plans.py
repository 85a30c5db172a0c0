#!/usr/bin/env python
"""The micro-batches the GPU check's new path forms (CPU only, seconds): per batch of each workload, the prompt
lengths and, for the token-budget plan and for the fixed 8-row split, each micro-batch's rows, padded length
L (longest prompt + response tokens; the check forces full-length responses), L mod 128 and its largest left
padding. docs/gpu_performance.md ("The (b) NaN") reads which micro-batches have L = 64 mod 128 with padding.

    python scripts/bench_gpu_plans.py [--batches 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import bench_gpu
from papo.rollout.micro_batches import fixed_size_split, plan_micro_batches


def describe(rows_prompt: list[int], T: int, plan: list[list[int]]) -> str:
    out = []
    for mb in plan:
        longest = max(rows_prompt[r] for r in mb)
        pad = max(longest - rows_prompt[r] for r in mb)
        out.append(f"{len(mb)} rows L={longest + T} (mod 128: {(longest + T) % 128}) pad<={pad}")
    return "; ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=4)
    cli = ap.parse_args()
    args = bench_gpu.parse_args([])
    for case in ("a", "b"):
        ns = bench_gpu.workload(args, case, 0, cli.batches)
        probe, _ = bench.build_module(ns, "grpo", bench_gpu.base_overrides(args) + bench_gpu.PATHS["new"])
        for i, batch in enumerate(bench.build_batches(ns)[: cli.batches]):
            enc, _, _ = probe.source.generator.encode(batch, masked=False)
            lengths = enc["attention_mask"].sum(1).tolist()
            rows = [p for p in lengths for _ in range(ns.group_size)]
            T = ns.max_new_tokens
            budget = plan_micro_batches(rows, [T] * len(rows), 64, 16384)
            print(f"({case}) batch {i}: prompts {min(lengths)}-{max(lengths)} tokens")
            print(f"  budget 16384 tokens: {describe(rows, T, budget)}")
            print(f"  fixed 8 rows:        {describe(rows, T, fixed_size_split(len(rows), 8))}")


if __name__ == "__main__":
    main()
