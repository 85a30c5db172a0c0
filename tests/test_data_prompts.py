"""Prompt templates."""

from __future__ import annotations

import pytest

from papo.data.prompts import PROMPT_TEMPLATES, PUBLISHED_INSTRUCTION, build_prompt


def test_published_prompt_is_question_blank_line_instruction():
    prompt = build_prompt("  How many objects are in the image?\n")
    assert prompt == "How many objects are in the image?\n\n" + PUBLISHED_INSTRUCTION
    assert PUBLISHED_INSTRUCTION == (
        "You FIRST think about the reasoning process as an internal monologue and then provide the final "
        "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
        "BE put in \\boxed{}."
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
