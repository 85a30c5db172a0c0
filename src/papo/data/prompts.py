"""Prompt templates: the question followed by the answer-format instruction.

The published PAPO / EasyR1 prompt is the question, a blank line, then an instruction to reason inside
``<think> </think>`` and to put the final answer in ``\\boxed{}``. The format reward (``papo.rewards``) checks
exactly that shape, so every template here asks for it.

Templates are picked by name (``data.prompt_template=published``). A custom template may be given instead of a
name: any string containing the literal placeholder ``{problem}`` (substituted by plain string replacement, so
other braces such as ``\\boxed{}`` need no escaping). An unknown name is an error listing the valid names.

Differences from the released code: EasyR1's jinja template joins question and instruction with a single
space; the PAPO paper and its released prompt use a blank line, which is what ``published`` does.
"""

from __future__ import annotations

__all__ = ["PROMPT_TEMPLATES", "PUBLISHED_INSTRUCTION", "SHORT_INSTRUCTION", "build_prompt"]

#: The instruction of the published runs (EasyR1 / PAPO ``math`` format prompt), verbatim.
PUBLISHED_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}."
)

#: A short instruction with the same required answer format: fewer prompt tokens for the tiny local model.
SHORT_INSTRUCTION = "Think in <think></think>, answer in \\boxed{}."

#: name -> template; ``{problem}`` is replaced by the stripped question.
PROMPT_TEMPLATES: dict[str, str] = {
    "published": "{problem}\n\n" + PUBLISHED_INSTRUCTION,
    "short": "{problem}\n\n" + SHORT_INSTRUCTION,
}

_PLACEHOLDER = "{problem}"


def build_prompt(problem: str, template: str = "published") -> str:
    """Return the user prompt for ``problem`` under ``template``.

    Args:
        problem: the question text (leading/trailing whitespace is stripped, as EasyR1's ``| trim`` does).
        template: a name in :data:`PROMPT_TEMPLATES` or a custom string containing ``{problem}``.

    Raises:
        ValueError: ``template`` is neither a known name nor a string containing ``{problem}``.
    """
    if template in PROMPT_TEMPLATES:
        text = PROMPT_TEMPLATES[template]
    elif isinstance(template, str) and _PLACEHOLDER in template:
        text = template
    else:
        raise ValueError(
            f"Unknown prompt template {template!r}. Valid names: {sorted(PROMPT_TEMPLATES)}; "
            f"or pass a custom template string containing the placeholder {_PLACEHOLDER!r}."
        )
    return text.replace(_PLACEHOLDER, str(problem).strip())
