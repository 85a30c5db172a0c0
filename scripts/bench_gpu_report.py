#!/usr/bin/env python
"""docs/gpu_performance.md's results section, regenerated from the JSON of scripts/bench_gpu.py.

    python scripts/bench_gpu_report.py bench_gpu.json                  # rewrites docs/gpu_performance.md
    python scripts/bench_gpu_report.py run1.json run2.json             # one subsection per run, in order
    python scripts/bench_gpu_report.py bench_gpu.json --doc docs/performance.md   # into another page
    python scripts/bench_gpu_report.py bench_gpu.json --print          # to stdout only

The section between the markers ``<!-- bench_gpu_report:begin -->`` and ``<!-- bench_gpu_report:end -->`` is
replaced by: the run's date, commit, machine and command; each target of issue 16 with its measured value
and whether it is met; every run (seconds per step and per phase, decode ms per token, response tokens per
second, peak GPU memory, MFU, whether the decode replayed CUDA graphs); the correctness checks; the runs the
budget skipped and any errors. Nothing is typed by hand: every number comes from the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_gpu_report:begin -->", "<!-- bench_gpu_report:end -->"


def _run(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    r = doc.get("runs", {}).get(key)
    return r if r and "step_s_median" in r else None


def targets(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured value, met) rows; 'not measured' where the runs it needs are missing."""
    rows = []

    def add(name: str, value: float | None, fmt: str, ok: bool | None) -> None:
        shown = "not measured" if value is None else fmt.format(value)
        rows.append((name, shown, "-" if ok is None else ("**met**" if ok else "**not met**")))

    a_new, a_old = _run(doc, "a/new/grpo"), _run(doc, "a/old/grpo")
    a_papo, b_new, b_papo = _run(doc, "a/new/papo"), _run(doc, "b/new/grpo"), _run(doc, "b/new/papo")
    new_paths = (("new path", a_new), ("new path, compiled step", _run(doc, "a/new-compiled/grpo")))
    for path, run in new_paths:
        v = run["decode_ms_per_token"] if run else None
        add(
            f"decode <= 4 ms per token at {run['rows'] if run else 32} rows (a, {path})",
            v,
            "{:.2f} ms",
            None if v is None else v <= 4,
        )
    v = b_new["decode_ms_per_token"] if b_new else None
    add(
        f"decode <= 8 ms per token at {b_new['rows'] if b_new else 256} rows (b, new path)",
        v,
        "{:.2f} ms",
        None if v is None else v <= 8,
    )
    for path, run in new_paths:
        v = a_old["step_s_median"] / run["step_s_median"] if a_old and run else None
        add(
            f"GRPO step on (a) >= 4x faster than today's path (same run; {path})",
            v,
            "{:.2f}x",
            None if v is None else v >= 4,
        )
    v = a_papo["step_s_median"] / a_new["step_s_median"] if a_papo and a_new else None
    add("PAPO / GRPO step time <= 1.15 (a, new path)", v, "{:.2f}", None if v is None else v <= 1.15)
    v = b_papo["response_tokens_per_s"] if b_papo else None
    add(
        "whole PAPO step on (b) >= 2,000 response tokens/s",
        v,
        "{:,.0f} tokens/s",
        None if v is None else v >= 2000,
    )
    card = doc.get("machine", {}).get("gpu_memory_gib")
    v = b_papo["peak_gpu_mem_gib"] if b_papo else None
    ok = None if v is None or card is None else v < card
    add(
        f"peak memory on (b) within the card ({card:.0f} GiB)"
        if card
        else "peak memory on (b) within the card",
        v,
        "{:.1f} GiB",
        ok,
    )
    return rows


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def runs_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| run (case/path/side) | rows x tokens | s/step (median of n) | generate s | log-prob no-grad s | forward s "
        "| backward s | decode ms/token | response tokens/s | peak GPU GiB | MFU (vs peak) | decode |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in doc.get("runs", {}).items():
        if "step_s_median" not in r:
            lines.append(f"| {key} | error: {r.get('error', '?')} |" + " |" * 10)
            continue
        ph = r["phase_s_median"]
        decode = "-"
        if "decode" in r:
            graphs = r["decode"]["graphs"]
            captured = [rows for rows, g in graphs.items() if g["captured"]]
            decode = f"CUDA graphs ({', '.join(captured)} rows)" if captured else "static cache, no graph"
            compiled = [rows for rows, g in graphs.items() if g.get("compiled")]
            if compiled:
                decode += f", step compiled ({', '.join(compiled)} rows)"
            if r["decode"].get("fallback"):
                decode = f"fell back: {r['decode']['fallback']}"
        if r.get("skipped_steps"):
            decode += f"; {r['skipped_steps']} optimiser steps skipped (non-finite gradient)"
        lines.append(
            f"| {key} | {r['rows']} x {r['max_new_tokens']} | {r['step_s_median']:.2f} (n={r['steps_measured']}) "
            f"| {ph['generate']:.2f} | {ph['logp_nograd']:.2f} | {ph['forward']:.2f} | {ph['backward']:.2f} "
            f"| {r['decode_ms_per_token']:.2f} | {r['response_tokens_per_s']:,.0f} | {_fmt(r['peak_gpu_mem_gib'], '.1f')} "
            f"| {100 * r['mfu_vs_peak']:.1f}% | {decode} |"
        )
    return lines


def correctness_lines(doc: dict[str, Any]) -> list[str]:
    lines = ["| check | result |", "|---|---|"]
    for name, c in doc.get("correctness", {}).items():
        if "error" in c:
            lines.append(f"| {name} | error: {c['error']} |")
            continue
        parts = []
        for part in (c, c.get("decode"), c.get("logprobs")):
            if not isinstance(part, dict):
                continue
            for k, v in part.items():
                if (
                    k in ("decode", "logprobs", "graphs", "seconds", "traceback", "cases", "top_ops")
                    or v is None
                ):
                    continue
                parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
        parts += [_nan_case(key, case) for key, case in c.get("cases", {}).items()]
        if c.get("top_ops"):
            ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%" for o in c["top_ops"][:10])
            parts.append(f"top ops by {c.get('profile_time')}: {ops}")
        lines.append(f"| {name} | {'; '.join(parts)} |")
    return lines


def _nan_case(key: str, case: dict[str, Any]) -> str:
    """One case of the ``sdpa_nan`` diagnostic: its gradient norm, or which layers' gradients are not finite."""
    if "error" in case:
        return f"{key}: error ({case['error'][:80]})"
    text = f"{key}: loss {case['loss']:.4g}, grad norm {case['grad_norm']:.4g}"
    if case.get("params_nonfinite"):
        text += f" ({case['params_nonfinite']} params non-finite, text layers {case['layers_nonfinite']})"
    return text


def section(doc: dict[str, Any], source: str) -> str:
    m = doc.get("machine", {})
    gpu = m.get("gpu") or "CPU (dry run: not a GPU measurement)"
    out = [
        f"Generated by `python scripts/bench_gpu_report.py {source}` from the JSON of `{doc.get('command')}` "
        f"(run {doc.get('date')}, commit {doc.get('commit')}; {gpu}, torch {m.get('torch')}, transformers "
        f"{m.get('transformers')}; {doc.get('wall_s', 0):.0f} s in all). Workloads: "
        + ", ".join(
            f"({k}) {c['prompts']} prompts x G={c['group_size']}, {c['max_new_tokens']} tokens"
            for k, c in doc.get("cases", {}).items()
        )
        + ". Paths: `old` = "
        + ", ".join(f"`{o}`" for o in doc.get("paths", {}).get("old", []))
        + "; `new` = "
        + ", ".join(f"`{o}`" for o in doc.get("paths", {}).get("new", []))
        + "; `new-compiled` = `new` with `rollout.decoder=static_compiled` (the step compiled by torch.compile)"
        + "; `new-fp32` = `new` on fp32 weights under Lightning's `bf16-mixed` (the other runs: bf16 weights).",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[f"| {t} | {v} | {ok} |" for t, v, ok in targets(doc)],
        "",
        *runs_table(doc),
        "",
    ]
    rates = [r for r in doc.get("bf16_matmul_flops", []) if r]
    if rates:
        out += [
            f"Measured bf16 matmul (8192^3): {', '.join(f'{r / 1e12:.0f}' for r in rates)} TFLOP/s; MFU above is "
            f"against {doc.get('args', {}).get('peak_tflops')} TFLOP/s.",
            "",
        ]
    out += ["Correctness checks:", "", *correctness_lines(doc), ""]
    for key, why in doc.get("skipped", {}).items():
        out.append(f"- `{key}` not run: {why}")
    return "\n".join(out).rstrip() + "\n"


def rewrite(doc_path: Path, body: str) -> None:
    text = doc_path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc_path}: markers {BEGIN} / {END} not found")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    doc_path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{body}{END}", text, count=1))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "json", nargs="+", help="the JSON scripts/bench_gpu.py wrote (several: one subsection each)"
    )
    ap.add_argument("--doc", default=str(ROOT / "docs" / "gpu_performance.md"))
    ap.add_argument("--print", action="store_true", help="print the section instead of rewriting the file")
    args = ap.parse_args(argv)
    docs = [(json.loads(Path(p).read_text()), p) for p in args.json]
    if len(docs) == 1:
        body = section(*docs[0])
    else:
        body = "\n".join(
            f"### Run {i} of {len(docs)}: `{d.get('command')}`\n\n{section(d, p)}"
            for i, (d, p) in enumerate(docs, 1)
        )
    if args.print:
        print(body)
        return
    rewrite(Path(args.doc), body)
    print(f"rewrote the results section of {args.doc}")


if __name__ == "__main__":
    main(sys.argv[1:])
