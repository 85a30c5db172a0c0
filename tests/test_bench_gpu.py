"""The prepared GPU check (scripts/bench_gpu.sh -> scripts/bench_gpu.py) as a CPU dry run (``--tiny``): every
correctness part and every planned run completes and lands in the JSON with date, commit, machine and
command; and docs/gpu_performance.md's section regenerated from a JSON by scripts/bench_gpu_report.py marks
each target with its measured value."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report_module():
    spec = importlib.util.spec_from_file_location(
        "bench_gpu_report", ROOT / "scripts" / "bench_gpu_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(step_s: float, decode_ms: float, tok_s: float, peak: float | None = 20.0) -> dict:
    return {
        "rows": 32,
        "max_new_tokens": 256,
        "step_s_median": step_s,
        "steps_measured": 2,
        "decode_ms_per_token": decode_ms,
        "response_tokens_per_s": tok_s,
        "peak_gpu_mem_gib": peak,
        "mfu_vs_peak": 0.2,
        "phase_s_median": {p: 0.1 for p in ("generate", "logp_nograd", "forward", "backward")},
    }


def test_targets_are_marked_from_the_measured_values(report_module) -> None:
    doc = {
        "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8},
        "runs": {
            "a/new/grpo": _run(3.0, 3.5, 2700),
            "a/new/papo": _run(3.6, 3.6, 2300),  # 1.20 > 1.15
            "a/old/grpo": _run(13.0, 40.0, 600),  # 4.33x
            "a/new-compiled/grpo": _run(4.0, 4.5, 2000),  # 3.25x, 4.5 ms > 4
            "b/new/grpo": _run(20.0, 9.0, 6500),  # 9 ms > 8
            "b/new/papo": _run(24.0, 9.1, 5461, peak=150.0),  # over the card
        },
    }
    rows = {t: (v, ok) for t, v, ok in report_module.targets(doc)}
    assert rows["decode <= 4 ms per token at 32 rows (a, new path)"] == ("3.50 ms", "**met**")
    assert rows["decode <= 4 ms per token at 32 rows (a, new path, compiled step)"] == (
        "4.50 ms",
        "**not met**",
    )
    assert rows["decode <= 8 ms per token at 32 rows (b, new path)"] == ("9.00 ms", "**not met**")
    four_x = "GRPO step on (a) >= 4x faster than today's path (same run; "
    assert rows[four_x + "new path)"] == ("4.33x", "**met**")
    assert rows[four_x + "new path, compiled step)"] == ("3.25x", "**not met**")
    assert rows["PAPO / GRPO step time <= 1.15 (a, new path)"] == ("1.20", "**not met**")
    assert rows["whole PAPO step on (b) >= 2,000 response tokens/s"] == ("5,461 tokens/s", "**met**")
    assert rows["peak memory on (b) within the card (140 GiB)"] == ("150.0 GiB", "**not met**")
    del doc["runs"]["a/old/grpo"]
    rows = {t: (v, ok) for t, v, ok in report_module.targets(doc)}
    assert rows[four_x + "new path)"] == ("not measured", "-")
    assert rows[four_x + "new path, compiled step)"] == ("not measured", "-")


def test_report_rewrites_only_the_marked_section(report_module, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        f"# Title\n\nprose\n\n{report_module.BEGIN}\nold table\n{report_module.END}\n\nmore prose\n"
    )
    report_module.rewrite(page, "new table\n")
    assert (
        page.read_text()
        == f"# Title\n\nprose\n\n{report_module.BEGIN}\nnew table\n{report_module.END}\n\nmore prose\n"
    )
    assert report_module.BEGIN in (ROOT / "docs" / "gpu_performance.md").read_text()


@pytest.mark.slow
def test_bench_gpu_tiny_dry_run(tmp_path: Path, cache_dir: Path, report_module) -> None:
    out = tmp_path / "bench_gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "PAPO_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", "scripts/bench_gpu.sh", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {"date", "commit", "command", "machine", "wall_s"} <= set(doc) and "--tiny" in doc["command"]
    errors = {k: v["error"] for k, v in {**doc["correctness"], **doc["runs"]}.items() if "error" in v}
    assert not errors
    for family in ("tiny_qwen2_5_vl", "tiny_qwen3_vl"):
        c = doc["correctness"][family]
        assert c["decode"]["greedy_graph_equals_lean"] and c["decode"]["sampled_graph_equals_lean"]
        assert c["decode"]["fallback"] is None and c["logprobs"]["chunked_head_used"]
        assert c["logprobs"]["logp_max_abs_diff"] < 1e-5 and c["logprobs"]["grad_relative_diff"] < 1e-5
    assert doc["correctness"]["3b_on_policy"]["max_abs"] < 1e-4
    # the NaN diagnostic: every case ran; moving the padding behind the response changes no loss or gradient
    nan = doc["correctness"]["sdpa_nan"]
    assert nan["nan_cases"] == [] and set(nan["cases"]) == {
        f"{b}/{a}" for b in ("default", "math") for a in ("aligned", "aligned_masked", "left_padded")
    }
    for backend in ("default", "math"):
        aligned = nan["cases"][f"{backend}/aligned"]
        assert aligned["params_nonfinite"] == 0 and aligned["grad_norm"] > 0
        for other in ("aligned_masked", "left_padded"):
            assert aligned["loss"] == pytest.approx(nan["cases"][f"{backend}/{other}"]["loss"], rel=1e-5)
            assert aligned["grad_norm"] == pytest.approx(
                nan["cases"][f"{backend}/{other}"]["grad_norm"], rel=1e-4
            )
    split = doc["correctness"]["decode_split"]
    assert split["ms_per_token_replay"] > 0 and split["ms_per_token_step_rule"] > 0
    assert split["ms_per_token_prefill_share"] > 0 and not split["compiled"]
    compiled = doc["correctness"]["decode_split_compiled"]
    assert compiled["compiled"] and compiled["greedy_tokens_equal_uncompiled"]
    assert compiled["compile_and_capture_s"] > 0 and compiled["ms_per_token_replay"] > 0
    prof = doc["correctness"]["backward_profile"]
    assert prof["backward_s"] > 0 and any("mm" in o["op"] for o in prof["top_ops"])
    assert prof["vision"]["backward_s"] > 0 and prof["vision"]["sdpa_calls_forward"] >= 1
    assert set(doc["runs"]) == {
        f"{c}/{p}/{s}" for c in "ab" for p in ("new", "old") for s in ("grpo", "papo")
    } | {"a/new-fp32/grpo", "a/new-compiled/grpo"}
    assert all(g["compiled"] for g in doc["runs"]["a/new-compiled/grpo"]["decode"]["graphs"].values())
    assert not any(g["compiled"] for g in doc["runs"]["a/new/grpo"]["decode"]["graphs"].values())
    fp32 = doc["runs"]["a/new-fp32/grpo"]
    assert fp32["precision"] == "bf16-mixed" and fp32["weights_dtype"] == "torch.float32"
    for key, r in doc["runs"].items():
        assert r["step_s_median"] > 0 and r["decode_ms_per_token"] > 0 and r["response_tokens_per_s"] > 0, key
        if key.split("/")[1].startswith("new"):
            assert r["decode"]["fallback"] is None and r["decode"]["graphs"], key  # the static loop ran
    page = tmp_path / "gpu_performance.md"
    shutil.copy(ROOT / "docs" / "gpu_performance.md", page)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu_report.py"), str(out), "--doc", str(page)],
        check=True,
    )
    text = page.read_text()
    assert "CPU (dry run: not a GPU measurement)" in text and doc["commit"] in text
    ratio = doc["runs"]["a/old/grpo"]["step_s_median"] / doc["runs"]["a/new/grpo"]["step_s_median"]
    assert f"| GRPO step on (a) >= 4x faster than today's path (same run; new path) | {ratio:.2f}x |" in text
    assert "step compiled" in text  # the compiled run's decode column
