"""Every reference in the README, docs/, the code, configs and scripts resolves inside the repository.

Checked: relative Markdown links (the file, and the heading when the link has ``#anchor``, by GitHub's
anchor rule) in README.md and docs/*.md; and every path under ``docs/``, ``src/``, ``configs/``,
``scripts/``, ``tests/`` or ``.ci/`` that README.md, docs/*.md, src/, configs/ or scripts/ mention. Paths with
a placeholder (``<run>``, ``*``, ``{a,b}``) are skipped, and so are a command's output (``--out PATH``) and
the files the README's worked examples tell the reader to create (``EXAMPLE_FILES``, which must not exist).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "configs").rglob("*.yaml")),
    *sorted((ROOT / "scripts").glob("*.py")),
    *sorted((ROOT / "scripts").glob("*.sh")),
]
# files the README's "Extending" section asks the reader to write
EXAMPLE_FILES = {
    "src/papo/losses/ratio_penalty.py",
    "configs/loss/papo_ratio.yaml",
    "configs/algo/best.yaml",
    "configs/data/my_vqa.yaml",
}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./~-])((?:docs|src|configs|scripts|tests|\.ci)/[\w./\-<>*{},]*)")
# a path a command is told to write (``--out docs/measurements/x.json``) need not exist yet
OUTPUT = re.compile(r"--out[= ]((?:docs|src|configs|scripts|tests)/[\w./\-]+)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # '#' lines in code blocks are not headings
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", MARKDOWN, ids=_rel)
def test_markdown_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists() or not dest.is_relative_to(ROOT):
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {_rel(dest)}")
    assert not broken, f"{_rel(doc)}: " + "; ".join(broken)


@pytest.mark.parametrize("source", MARKDOWN + SOURCES, ids=_rel)
def test_cited_repository_paths_exist(source: Path) -> None:
    missing = set()
    text = source.read_text()
    outputs = set(OUTPUT.findall(text))
    for cited in PATH.findall(text):
        cited = cited.rstrip(".,")
        if re.search(r"[<>*{}]", cited) or cited in EXAMPLE_FILES or cited in outputs:
            continue
        if not (ROOT / cited).exists():
            missing.add(cited)
    assert not missing, f"{_rel(source)} cites paths that do not exist: {sorted(missing)}"


def test_example_files_are_not_in_the_repository() -> None:
    assert not [f for f in EXAMPLE_FILES if (ROOT / f).exists()]


def test_readme_documentation_index_lists_every_page_of_docs() -> None:
    """The README's "Documentation" table is the index of docs/: every page is in it, once."""
    section = re.search(
        r"^## Documentation\n(.*?)(?=^## )", (ROOT / "README.md").read_text(), flags=re.S | re.M
    )
    assert section, "README.md has no '## Documentation' section"
    listed = re.findall(r"^\| \[[^\]]*\]\((docs/[\w.\-]+\.md)\)", section.group(1), flags=re.M)
    pages = sorted(_rel(p) for p in (ROOT / "docs").glob("*.md"))
    assert len(listed) == len(set(listed)), (
        f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    )
    assert sorted(listed) == pages, (
        f"not in the index: {sorted(set(pages) - set(listed))}; not in docs/: {sorted(set(listed) - set(pages))}"
    )
