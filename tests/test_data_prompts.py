"""Prompt templates: the published one is PAPO's math_perception text, verbatim."""

from __future__ import annotations

import pytest

from papo.data.prompts import (
    EASYR1_MATH_INSTRUCTION,
    PROMPT_TEMPLATES,
    PUBLISHED_INSTRUCTION,
    TOKENIZER_CORPUS_TEMPLATES,
    build_prompt,
)

# The released code's examples/format_prompt/math_perception.jinja (MikeWangWZHL/PAPO), byte for byte; the
# released dataset renders jinja2.Template(file.strip()) with content=<question>.
MATH_PERCEPTION_JINJA = (
    "{{ content | trim }}\n\nYou first think through the reasoning process as an internal monologue, enclosed "
    "within <think> </think> tags. Then, provide your final answer enclosed within \\boxed{}."
)
# EasyR1's examples/format_prompt/math.jinja (with its trailing newline)
EASYR1_MATH_JINJA = (
    "{{ content | trim }} You FIRST think about the reasoning process as an internal monologue and then provide "
    "the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer "
    "MUST BE put in \\boxed{}.\n"
)


def _render(jinja_text: str, question: str) -> str:
    """What the released RLHFDataset._build_messages does with a format-prompt file."""
    from jinja2 import Template

    return Template(jinja_text.strip()).render(content=question)


@pytest.mark.parametrize("question", ["  How many objects are in the image?\n", "x", "A\n\nB  "])
def test_published_prompt_is_papos_math_perception_template(question: str) -> None:
    assert build_prompt(question) == _render(MATH_PERCEPTION_JINJA, question)
    assert build_prompt(question) == question.strip() + "\n\n" + PUBLISHED_INSTRUCTION
    assert "internal monologue, enclosed within <think> </think> tags" in PUBLISHED_INSTRUCTION
    assert "MUST BE" not in PUBLISHED_INSTRUCTION  # EasyR1's wording is a different text


def test_easyr1_math_template_is_a_named_option() -> None:
    q = "  What is 2 + 1?\n"
    assert build_prompt(q, "easyr1_math") == _render(EASYR1_MATH_JINJA, q)
    assert build_prompt(q, "easyr1_math") == "What is 2 + 1? " + EASYR1_MATH_INSTRUCTION


def test_hub_data_configs_use_the_published_template() -> None:
    from conftest import compose_cfg

    for data in ("virl39k", "mathverse", "geometry3k", "mmk12", "clevr_count"):
        assert compose_cfg([f"data={data}"]).data.prompt_template == "published", data
    assert compose_cfg(["experiment=papo_g_3b"]).data.prompt_template == "published"


def test_tokenizer_corpus_templates_are_frozen() -> None:
    """The embedded tokenizer was trained on these texts: a change would silently change the embedded model."""
    assert TOKENIZER_CORPUS_TEMPLATES == (
        "{problem}\n\nYou FIRST think about the reasoning process as an internal monologue and then provide the "
        "final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
        "BE put in \\boxed{}.",
        "{problem}\n\nThink in <think></think>, answer in \\boxed{}.",
    )


def test_short_template():
    assert build_prompt("Q?", "short") == "Q?\n\nThink in <think></think>, answer in \\boxed{}."


def test_custom_template_with_placeholder():
    assert (
        build_prompt("Q?", "Question: {problem} Answer in \\boxed{}.") == "Question: Q? Answer in \\boxed{}."
    )


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match="publshed") as err:
        build_prompt("Q?", "publshed")
    for name in PROMPT_TEMPLATES:
        assert name in str(err.value)
