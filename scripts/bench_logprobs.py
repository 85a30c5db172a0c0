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
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    return module


def measure(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Median seconds of forward + backward for both batch layouts on ``model_name``."""
    import torch

    from papo.models.logprobs import per_row_visual, response_logps

    bench = _bench_module()
    ns = argparse.Namespace(**{**vars(args), "model": model_name, "warmup": 0, "steps": 1, "lr": 1e-5})
    module, _ = bench.build_module(ns, "grpo")
    policy = module.policy
    batch = bench.build_batches(ns)[0]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--reps", type=int, default=7, help="timed passes per layout (interleaved)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.reps < 3:
        ap.error("--reps must be >= 3 for a median and quartiles")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(args, m) for m in args.models.split(",")]
    print(
        f"log-prob forward + backward, {args.prompts} prompts x G={args.group_size}, {args.max_new_tokens} tokens, "
        f"{args.image_size} px, {torch.get_num_threads()} thread(s), {args.reps} interleaved reps"
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
    out = Path(args.out or ROOT / "logs" / "bench" / f"bench_logprobs-{dt.datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "results": results}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
