"""Benchmark scripts: scripts/bench.py's FLOP floor (hand-computed counts on made-up dimensions, each prompt's
images and prefill once), its TRL-side phases from public hooks, its Markdown table written into a doc
section, a smoke run of its TRL side, and smoke runs of the A/B scripts scripts/bench_logprobs.py (shared-image
log-prob pass; chunked LM head) and scripts/bench_decode.py (lean decode loop vs HF generate; static-cache loop
vs lean)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    return module


DIMS = {
    "text_linear": 100,
    "lm_head": 10,
    "text_attn_dim": 2,
    "text_layers": 1,
    "vision_linear": 50,
    "merger_linear": 8,
    "vision_attn_dim": 1,
    "vision_depth": 1,
    "vision_full_blocks": 1,
    "vision_window": 8,
    "merge": 2,
}


def test_vision_flops_by_hand(bench) -> None:
    # 2x2 patches: linear 2*50*4 + merger 2*8*4/4 + full attention 4*1*(4*4)
    assert bench.vision_flops(DIMS, (2, 2)) == 400 + 16 + 64


def test_forward_flops_by_hand(bench) -> None:
    # prompt 3 + response 2 = 5 tokens: linear 2*100*5, attention 4*1*2*15 pairs, LM head 2*10*2, no image
    assert bench.forward_flops(DIMS, 3, 2, []) == 1000 + 120 + 40


def test_rollout_flops_by_hand(bench) -> None:
    # prefill of 3 tokens: linear 2*100*3, attention 4*1*2*6 pairs, LM head 2*10 on the last position
    assert bench.prefill_flops(DIMS, 3) == 600 + 48 + 20
    # decode tokens 2 and 3 (the first comes from the prefill): 2*(100+10) each + attention 4*2*(3+1) and 4*2*(3+2)
    assert bench.decode_flops(DIMS, 3, 3) == 2 * 220 + 32 + 40


def test_each_prompts_images_and_prefill_count_once_per_pass(bench) -> None:
    G = 4
    rows = [(3, [(2, 2)])] * G + [(5, [(2, 2), (2, 2)])] * G  # two prompts, one and two images
    vision = 3 * bench.vision_flops(DIMS, (2, 2))  # three distinct images
    text_gen = bench.prefill_flops(DIMS, 3) + bench.prefill_flops(DIMS, 5)  # one prefill per prompt
    text_gen += sum(bench.decode_flops(DIMS, p, 2) for p, _ in rows)
    text_fwd = sum(bench.forward_flops(DIMS, p, 2, []) for p, _ in rows)
    f = bench.step_flops(DIMS, rows, 2, masked_forward=True, group_size=G)
    assert f["generate"] == vision + text_gen
    assert f["forward"] == vision + text_fwd and f["masked_forward"] == f["forward"]
    assert f["backward"] == 2 * f["forward"]
    assert f["total"] == f["generate"] + 4 * f["forward"]
    per_row = bench.step_flops(DIMS, rows, 2, masked_forward=False, group_size=1)  # G copies counted
    assert per_row["forward"] - text_fwd == G * vision
    prefills = bench.prefill_flops(DIMS, 3) + bench.prefill_flops(DIMS, 5)
    assert per_row["generate"] - f["generate"] == (G - 1) * (vision + prefills)


def _run_ab_script(name: str, tmp_path: Path, cache_dir: Path, *extra: str) -> dict:
    """Smoke run of an A/B script (tiny model, 2 prompts x G=2, 4 tokens, 3 reps); its one result."""
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(ROOT / "scripts" / name), "--models", "tiny", "--reps", "3", "--prompts", "2"]
    cmd += ["--group-size", "2", "--max-new-tokens", "4", "--threads", "1", "--out", str(out), *extra]
    env = {**os.environ, "PAPO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {"date", "commit", "command", "machine"} <= set(doc)
    (r,) = doc["results"]
    return r


def test_bench_logprobs_smoke(tmp_path: Path, cache_dir: Path) -> None:
    r = _run_ab_script("bench_logprobs.py", tmp_path, cache_dir)
    assert r["vision_patch_rows_per_pass"]["per_row"] == 2 * r["vision_patch_rows_per_pass"]["shared"]
    assert r["max_abs_logp_diff"] < 1e-5 and r["rows"] == 4
    assert len(r["raw_s"]["shared"]) == len(r["raw_s"]["per_row"]) == 3
    assert r["speedup"] == r["median_s"]["per_row"] / r["median_s"]["shared"]


def test_bench_decode_smoke(tmp_path: Path, cache_dir: Path) -> None:
    r = _run_ab_script("bench_decode.py", tmp_path, cache_dir)
    assert r["greedy_tokens_identical"] and r["rows"] == 4 and r["response_tokens"] == 16  # forced length
    assert len(r["raw_s"]["lean"]) == len(r["raw_s"]["generate"]) == 3
    assert r["speedup"] == r["median_s"]["generate"] / r["median_s"]["lean"]


def test_bench_decode_static_vs_lean_smoke(tmp_path: Path, cache_dir: Path) -> None:
    r = _run_ab_script("bench_decode.py", tmp_path, cache_dir, "--ab", "static", "--clock", "cpu")
    assert r["pair"] == ["static", "lean"] and r["greedy_tokens_identical"] and r["response_tokens"] == 16
    assert r["speedup"] == r["median_s"]["lean"] / r["median_s"]["static"]


def test_bench_logprobs_chunked_head_smoke(tmp_path: Path, cache_dir: Path) -> None:
    r = _run_ab_script("bench_logprobs.py", tmp_path, cache_dir, "--ab", "head", "--chunk-tokens", "3")
    assert r["max_abs_logp_diff"] < 1e-5 and r["chunk_tokens"] == 3 and r["rows"] == 4
    assert r["speedup"] == r["median_s"]["full"] / r["median_s"]["chunked"]


# ---------------------------------------------------------------------------------------------- TRL side, tables


def test_model_phase_hooks_split_a_step_from_public_hooks(bench) -> None:
    """No-grad forwards before the first forward with grad are ``generate``; the grad forward runs until the
    backward pass reaches the model's output; the backward until the last parameter's gradient lands."""
    import time

    import torch

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> dict:
            time.sleep(0.02)
            return {"log_probs": self.lin(x)}  # a dict output, like TRL's fused-head ModelOutput

    model = Slow()
    hooks = bench.ModelPhaseHooks(model)
    hooks.begin_step()
    with torch.no_grad():
        for _ in range(3):  # the decode steps
            model(torch.ones(1, 4))
    time.sleep(0.03)  # rollout bookkeeping
    out = model(torch.ones(1, 4))["log_probs"].sum()
    time.sleep(0.02)  # loss arithmetic before backward
    out.backward()
    with torch.no_grad():
        model(torch.ones(1, 4))  # a no-grad pass after the rollout
    ph = hooks.end_step({"score": 0.01})
    assert ph["generate"] >= 0.06 and ph["score"] == 0.01
    assert 0.02 <= ph["rollout_other"] < 0.06  # 0.03 of bookkeeping, less the timed score
    assert ph["forward"] >= 0.04 and ph["logp_nograd"] >= 0.02 and ph["backward"] >= 0.0
    assert model.lin.weight.grad is not None


def _fake_report() -> dict:
    def side(step: float, rss: float) -> dict:
        return {
            "step_s_median": step, "step_s_p25": step, "step_s_p75": step, "response_tokens_per_s": 64 / step,
            "floor_s": 0.01, "mfu": 0.01 / step, "peak_rss_mb": rss, "round_medians_s": [step, step],
            "phase_s_median": {p: 0.001 for p in ("generate", "score", "rollout_other", "logp_nograd",
                                                   "forward", "backward", "other")},
        }  # fmt: skip

    return {
        "date": "2026-12-01T10:00:00",
        "commit": "cafe123",
        "command": "python scripts/bench.py --models tiny",
        "machine": {
            "platform": "Linux",
            "processor": "x86_64",
            "cpu_count": 2,
            "load_avg": [0.1, 0.2, 0.3],
            "threads": 2,
            "fp32_matmul_flops": [1e11, 3e11, 2e11],
        },
        "versions": {"torch": "2", "transformers": "5", "trl": "1"},
        "args": {
            "prompts": 8,
            "group_size": 4,
            "max_new_tokens": 64,
            "image_size": 112,
            "rounds": 2,
            "steps": 6,
            "warmup": 2,
            "threads": 2,
        },
        "results": {"tiny": {"trl": side(0.4, 1000), "grpo": side(0.2, 800), "papo": side(0.25, 820)}},
    }


def test_bench_table_is_written_into_its_doc_section(bench, tmp_path: Path) -> None:
    doc = tmp_path / "perf.md"
    doc.write_text(
        "# prose\n\n<!-- bench_cpu_full:begin -->\nold\n<!-- bench_cpu_full:end -->\n\nmore prose\n"
    )
    bench.write_doc(_fake_report(), doc, "bench_cpu_full")
    text = doc.read_text()
    assert text.startswith("# prose\n\n<!-- bench_cpu_full:begin -->\n") and text.endswith("more prose\n")
    assert "old" not in text and "commit cafe123" in text and "fp32 matmul rate 200.0 GFLOP/s" in text
    assert "| tiny | TRL | 0.400 | 0.400-0.400 | 160 | 0.010 | 2.5% | 1000 |" in text
    assert "GRPO/TRL throughput 2.00x (by round: 2.00, 2.00); peak RSS GRPO/TRL 0.80" in text
    assert "PAPO/GRPO step time 1.25x" in text
    with pytest.raises(ValueError, match="bench_cpu_smoke:begin"):
        bench.write_doc(_fake_report(), doc, "bench_cpu_smoke")


@pytest.mark.slow
def test_bench_trl_side_smoke(tmp_path: Path, cache_dir: Path) -> None:
    """TRL's GRPOTrainer under the benchmark (tiny model, 2 steps): it trains, and every phase the public
    hooks measure is there, with TRL's own methods untouched."""
    pytest.importorskip("trl")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--models", "tiny", "--sides", "trl,grpo"]
    cmd += ["--rounds", "1", "--steps", "1", "--warmup", "1", "--prompts", "2", "--group-size", "2"]
    cmd += ["--max-new-tokens", "4", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PAPO_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"].startswith("python scripts/bench.py") and report["versions"]["trl"]
    for side in ("trl", "grpo"):
        r = report["results"]["tiny"][side]
        assert "error" not in r, r
        ph = r["phase_s_median"]
        assert ph["generate"] > 0 and ph["forward"] > 0 and ph["backward"] > 0, (side, ph)
        assert sum(ph.values()) == pytest.approx(r["step_s_median"], rel=1e-6)
