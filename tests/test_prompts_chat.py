"""Chat formatting with the real Qwen2.5-VL chat template: the system prompt option (``data.system_prompt``) and
the image placement the question asks for (``<image>`` placeholders honoured; none = images first)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from datasets import Dataset
from PIL import Image

from papo.data.datamodule import BadRowError, PapoDataModule
from papo.data.hub import load_split
from papo.data.prompts import IMAGE_PLACEHOLDER, chat_messages, placeholder_mismatch
from papo.rollout.inputs import chat_texts, encode_prompts
from papo.rollout.prompt_length import PromptLength

VISION = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def _png(color: tuple[int, int, int], size: tuple[int, int] = (56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def processor(cache_dir: Path):
    """The embedded model's processor: the stock Qwen2.5-VL image processor and chat template, built locally."""
    from transformers import AutoProcessor

    from papo.data.synthetic import synthetic_corpus
    from papo.models.stand_in import ensure_stand_in

    path = ensure_stand_in("qwen2_5_vl", cache_dir / "models", corpus_fn=synthetic_corpus)
    return AutoProcessor.from_pretrained(str(path), local_files_only=True)


def test_processor_carries_the_real_qwen2_5_vl_chat_template(processor) -> None:
    from papo.models.special_tokens import QWEN2_5_VL_CHAT_TEMPLATE

    assert processor.chat_template == QWEN2_5_VL_CHAT_TEMPLATE


def test_no_placeholder_puts_the_images_first_with_the_template_default_system(processor) -> None:
    (text,) = chat_texts(processor, ["How many?"], [2])
    assert text == (
        DEFAULT_SYSTEM
        + "<|im_start|>user\n"
        + VISION
        + VISION
        + "How many?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_placeholders_put_each_image_where_the_question_asks(processor) -> None:
    prompt = "Compare <image> with <image>: which is larger?"
    (text,) = chat_texts(processor, [prompt], [2])
    assert text == (
        DEFAULT_SYSTEM
        + "<|im_start|>user\nCompare "
        + VISION
        + " with "
        + VISION
        + ": which is larger?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert IMAGE_PLACEHOLDER not in text
    # a leading placeholder (ViRL39K's rows) gives today's placement exactly
    assert chat_texts(processor, ["<image>How many?"], [1]) == chat_texts(processor, ["How many?"], [1])


def test_system_prompt_replaces_the_template_default(processor) -> None:
    (text,) = chat_texts(processor, ["Q <image>"], [1], "Answer briefly.")
    assert text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nQ "
        + VISION
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    # per-prompt system prompts (a batch's list); None keeps the default
    texts = chat_texts(processor, ["a", "b"], [0, 0], ["S1", None])
    assert texts[0].startswith("<|im_start|>system\nS1<|im_end|>") and texts[1].startswith(DEFAULT_SYSTEM)


def test_placeholder_count_must_match_the_images() -> None:
    assert placeholder_mismatch("x <image> y", 1) is None and placeholder_mismatch("x y", 3) is None
    assert "2 <image> placeholder(s) but the row has 1 image(s)" in placeholder_mismatch("<image><image>", 1)
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        chat_messages("x <image>", 2)
    msgs = chat_messages("<image>\n<image>end", 2, "sys")
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": "sys"}]}
    assert msgs[1]["content"] == [{"type": "image"}, {"type": "text", "text": "\n"}, {"type": "image"},
                                  {"type": "text", "text": "end"}]  # fmt: skip


def _rows(problems: list[str], n_images: list[int]) -> Dataset:
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    return Dataset.from_dict(
        {
            "images": [[{"bytes": _png(colors[j]), "path": None} for j in range(k)] for k in n_images],
            "problem": problems,
            "answer": ["1"] * len(problems),
        }
    )


def test_datamodule_batch_carries_system_prompt_and_keeps_placeholders(processor) -> None:
    ds = _rows(["Left <image>, right <image>: same colour?", "How many?"], [2, 1])
    dm = PapoDataModule(
        val_dataset=ds, val_batch_size=2, prompt_template="short", system_prompt="Be exact.", dataset_name="p"
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["system_prompt"] == ["Be exact.", "Be exact."]
    assert batch["prompt"][0].startswith("Left <image>, right <image>: same colour?")
    texts = chat_texts(processor, batch["prompt"], [len(x) for x in batch["images"]], batch["system_prompt"])
    assert texts[0].count(VISION) == 2 and "Left " + VISION + ", right " + VISION in texts[0]
    assert texts[1].startswith("<|im_start|>system\nBe exact.<|im_end|>")
    # the processor accepts the placed images (it checks one image token run per image)
    enc = encode_prompts(processor, texts, batch["images"])
    assert enc["image_grid_thw"].shape[0] == 3
    # without the option: no system turn of ours, the template's default
    dm = PapoDataModule(val_dataset=ds, val_batch_size=2, prompt_template="short", dataset_name="p")
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["system_prompt"] == [None, None]


def test_a_row_with_a_wrong_placeholder_count_is_a_bad_row(caplog) -> None:
    ds = _rows(["ok <image>", "two <image> <image> but one image"], [1, 1])
    dm = PapoDataModule(val_dataset=ds, val_batch_size=2, dataset_name="p")
    dm.setup("validate")
    with pytest.raises(BadRowError, match=r"row=1 .*2 <image> placeholder\(s\) but the row has 1 image"):
        next(iter(dm.val_dataloader()))
    # on_bad_row=skip: the setup scan drops it with its reason
    dm = PapoDataModule(val_dataset=ds, val_batch_size=2, dataset_name="p", on_bad_row="skip")
    with caplog.at_level(logging.INFO, logger="papo.data.datamodule"):
        dm.setup("validate")
    assert len(dm.val_set) == 1 and "placeholder" in dm.dropped_rows[0]["reason"]


def test_prompt_length_counts_placed_images_and_the_system_prompt(processor) -> None:
    prompts = ["a <image> b <image> c", "plain question"]
    sizes = [[(56, 56), (112, 84)], [(56, 56)]]
    images = [[Image.new("RGB", s) for s in ss] for ss in sizes]
    lengths = PromptLength(processor).with_system_prompt("A system prompt.")
    enc = encode_prompts(processor, chat_texts(processor, prompts, [2, 1], "A system prompt."), images)
    assert lengths(prompts, sizes) == enc["attention_mask"].sum(1).tolist()
    assert PromptLength(processor)(prompts, sizes) != lengths(prompts, sizes)


def test_loader_keeps_placeholders_unless_asked_to_strip(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    _rows(["<image>\nFind x.", "Here <image> and <image>."], [1, 2]).to_parquet(str(path))
    assert list(load_split(str(path))["problem"]) == ["<image>\nFind x.", "Here <image> and <image>."]
    stripped = load_split(str(path), strip_image_placeholders=True)
    assert list(stripped["problem"]) == ["Find x.", "Here and ."]


def test_warm_start_cache_key_changes_only_with_a_system_prompt() -> None:
    from papo.warm_start.sft import _cache_key

    args = ({"lr": 1e-3}, Path("base"), {"source": "x"}, "short")
    assert _cache_key(*args) == _cache_key(*args, None) == _cache_key(*args, "")
    assert _cache_key(*args, "Be exact.") != _cache_key(*args)


def test_data_configs_declare_a_null_system_prompt() -> None:
    from conftest import compose_cfg

    for data in ("synthetic", "digits", "shortcut", "virl39k", "mathverse", "geometry3k", "local_files"):
        cfg = compose_cfg([f"data={data}"]).data
        assert "system_prompt" in cfg and cfg.system_prompt is None, data
    assert compose_cfg(["data=virl39k"]).data.train_dataset.strip_image_placeholders is False
