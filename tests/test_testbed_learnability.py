"""scripts/testbed_learnability.py: one arm end to end on tiny sizes (the eval.py plumbing, the warm-start
record), and the docs table regenerated between its markers from a report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "testbed_learnability", ROOT / "scripts" / "testbed_learnability.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["testbed_learnability"] = module
    spec.loader.exec_module(module)
    return module


def _report() -> dict:
    arm = {
        "metrics": {
            "acc": 0.755,
            "acc_by_task/count": 1.0,
            "acc_by_vd/low": 0.9,
            "acc_by_vd/high": 0.6,
            "acc_masked": 0.3,
            "acc_masked_by_vd/low": 0.5,
            "vision_gap": 0.455,
        },
        "warm_start": {"seconds": 91.6},
    }
    return {
        "date": "2026-12-04T18:00:00",
        "commit": "abc1234",
        "command": "python scripts/testbed_learnability.py",
        "machine": {"cpu_count": 2, "load_avg": [1.25, 1.0, 1.0]},
        "limit": 600,
        "arms": {"shortcut_0.9_600": arm},
    }


def test_table_rows_and_markers(script, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = script.markdown_table(_report())
    assert (
        "| `shortcut_0.9_600` | 75.5 | 100.0 | - | - | 90.0 | 60.0 | 30.0 | 50.0 | - | 45.5 | 92 |" in table
    )
    assert "commit abc1234" in table and "load average at the start 1.2" in table
    doc = tmp_path / "testbed.md"
    doc.write_text(f"intro\n{script.BEGIN}\nold table\n{script.END}\noutro\n")
    monkeypatch.setattr(script, "DOC", doc)
    script.write_table(_report())
    text = doc.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert table in text
    doc.write_text("no markers")
    with pytest.raises(RuntimeError, match="lacks the markers"):
        script.write_table(_report())


def test_one_arm_end_to_end_on_tiny_sizes(script, tmp_path: Path) -> None:
    overrides = [
        "data.train_dataset.shortcut_rate=0.9",
        "data.train_dataset.size=32",
        "data.val_dataset.size=8",
        "warm_start.max_steps=2",
        "warm_start.batch_size=8",
        "rollout.max_new_tokens=8",
    ]
    arm = script.run_arm("tiny", overrides, tmp_path, limit=4, threads=1)
    assert arm["num_prompts"] == 4 and arm["warm_start"]["max_steps"] == 2
    assert {"acc", "acc_masked", "vision_gap"} <= set(arm["metrics"])
    assert set(arm["counts"]["vd"]) <= {"low", "high"}
