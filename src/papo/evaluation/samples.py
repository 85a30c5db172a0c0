"""Sample generations for humans: question, real and masked image, answer, response and reward per view.

:func:`collect_samples` turns the first validation batch into a list of plain dicts (PIL images kept);
:func:`write_samples` writes them as Markdown (images embedded as PNG files next to it) and CSV. The
W&B table is built from the same dicts by :mod:`papo.callbacks.sample_table`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from papo.rollout.experience import Experience

#: columns of the CSV / W&B table (images are extra columns there)
SAMPLE_COLUMNS = (
    "step",
    "uid",
    "task_type",
    "vision_dependency",
    "question",
    "answer",
    "response",
    "reward",
    "accuracy",
    "format",
    "response_masked",
    "reward_masked",
    "accuracy_masked",
)


def collect_samples(
    batch: dict[str, Any],
    exp: Experience,
    masked: bool,
    samples: list[dict[str, Any]],
    max_samples: int,
    step: int = 0,
    group_offset: int = 0,
) -> list[dict[str, Any]]:
    """Add the first response of each of the first ``max_samples`` prompts of ``batch`` to ``samples``.

    Call with the real-image experience first (creates the records), then with the masked one (fills the
    ``*_masked`` fields of the same prompts). Returns ``samples``.
    """
    first_row: dict[int, int] = {}
    for i, g in enumerate(exp.group_ids.tolist()):
        first_row.setdefault(int(g) - group_offset, i)
    prompts = sorted(first_row)[:max_samples]
    if not masked:
        samples.clear()
        for p in prompts:
            masked_images = batch.get("images_masked")
            samples.append(
                {
                    "step": int(step),
                    "uid": batch["uid"][p],
                    "task_type": batch["task_type"][p],
                    "vision_dependency": batch["vision_dependency"][p],
                    "question": batch["problem"][p],
                    "answer": batch["answer"][p],
                    "images": list(batch["images"][p]),
                    "images_masked": list(masked_images[p]) if masked_images is not None else [],
                    "response": "",
                    "reward": float("nan"),
                    "accuracy": float("nan"),
                    "format": float("nan"),
                    "response_masked": "",
                    "reward_masked": float("nan"),
                    "accuracy_masked": float("nan"),
                }
            )
    by_uid = {s["uid"]: s for s in samples}
    sfx = "_masked" if masked else ""
    for p in prompts:
        rec = by_uid.get(batch["uid"][p])
        if rec is None:
            continue
        i = first_row[p]
        rec[f"response{sfx}"] = exp.texts[i] if i < len(exp.texts) else ""
        rec[f"reward{sfx}"] = float(exp.rewards[i])
        rec[f"accuracy{sfx}"] = float(exp.accuracy[i])
        if not masked:
            rec["format"] = float(exp.format[i])
    return samples


def _md_cell(text: Any) -> str:
    s = f"{text:.3g}" if isinstance(text, float) else str(text)
    return s.replace("|", "\\|").replace("\n", "<br>")


def write_samples(
    samples: list[dict[str, Any]], out_dir: str | Path, name: str, title: str | None = None
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` (with ``<out_dir>/images/<name>-<k>[-masked].png``) and ``<name>.csv``.

    ``title``: the Markdown heading (default: "Validation samples, step <step of the samples>").
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    step = samples[0]["step"] if samples else 0
    lines = [
        f"# {title or f'Validation samples, step {step}'}",
        "",
        "| # | image | masked | question | answer | response (real image) | acc / reward "
        "| response (masked image) | acc / reward |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, s in enumerate(samples):
        cells = []
        for key, tag in (("images", ""), ("images_masked", "-masked")):
            links = []
            for j, img in enumerate(s.get(key) or []):
                fname = f"{name}-{k}{tag}{'-' + str(j) if j else ''}.png"
                img.save(img_dir / fname)
                links.append(f"![](images/{fname})")
            cells.append(" ".join(links) or "-")
        lines.append(
            "| "
            + " | ".join(
                [
                    str(k),
                    *cells,
                    _md_cell(s["question"]),
                    _md_cell(s["answer"]),
                    f"`{_md_cell(s['response'])}`",
                    f"{s['accuracy']:.0f} / {s['reward']:.2f}",
                    f"`{_md_cell(s['response_masked'])}`" if s["response_masked"] else "-",
                    f"{s['accuracy_masked']:.0f} / {s['reward_masked']:.2f}" if s["response_masked"] else "-",
                ]
            )
            + " |"
        )
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    path_csv = out_dir / f"{name}.csv"
    with path_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(SAMPLE_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(samples)
    return md, path_csv
