"""Benchmark scripts: scripts/bench.py's FLOP floor (hand-computed counts on made-up dimensions, each prompt's
images and prefill once) and smoke runs of the A/B scripts scripts/bench_logprobs.py (shared-image log-prob
pass; chunked LM head) and scripts/bench_decode.py (lean decode loop vs HF generate; static-cache loop vs lean)."""

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
