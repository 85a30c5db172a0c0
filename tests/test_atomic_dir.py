"""The build-into-a-temporary-sibling-then-rename cache helper (papo.utils.atomic_dir), which the tiny VLM,
the Qwen3-VL stand-in and the warm start share."""

from __future__ import annotations

from pathlib import Path

import pytest

from papo.utils.atomic_dir import build_dir_once, is_complete


def _writer(text: str, calls: list[Path] | None = None):
    def build(tmp: Path) -> None:
        if calls is not None:
            calls.append(tmp)
        (tmp / "weights.bin").write_text(text)
        (tmp / "config.json").write_text("{}")

    return build


def _leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".tmp-" in p.name]


def test_builds_in_a_sibling_then_reuses(tmp_path: Path) -> None:
    target, calls = tmp_path / "cache" / "model-abc", []
    assert build_dir_once(target, _writer("first", calls)) is True
    assert is_complete(target) and (target / "weights.bin").read_text() == "first"
    assert calls[0].parent == target.parent and calls[0].name.startswith(".model-abc.tmp-")
    assert build_dir_once(target, _writer("second", calls)) is False  # reused: build not called
    assert len(calls) == 1 and (target / "weights.bin").read_text() == "first"
    assert not _leftovers(target.parent)


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def crash(tmp: Path) -> None:
        (tmp / "weights.bin").write_text("half")
        raise KeyboardInterrupt  # BaseException too: a Ctrl-C mid-build

    with pytest.raises(KeyboardInterrupt):
        build_dir_once(target, crash)
    assert not target.exists() and not _leftovers(tmp_path)


def test_a_build_finished_meanwhile_by_another_process_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def slow_build(tmp: Path) -> None:
        _writer("ours")(tmp)
        target.mkdir()  # another process renames its finished build into place first
        _writer("theirs")(target)

    assert build_dir_once(target, slow_build) is False
    assert (target / "weights.bin").read_text() == "theirs" and not _leftovers(tmp_path)


def test_rebuild_replaces_and_an_incomplete_target_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "model"
    build_dir_once(target, _writer("old"))
    assert build_dir_once(target, _writer("new"), rebuild=True) is True
    assert (target / "weights.bin").read_text() == "new"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "partial").write_text("no marker")
    assert build_dir_once(junk, _writer("fresh")) is True
    assert (junk / "weights.bin").read_text() == "fresh" and not (junk / "partial").exists()
    assert not _leftovers(tmp_path)
