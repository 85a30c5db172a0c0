"""Prompt templates: the question followed by the answer-format instruction.

Every template asks for the shape the format reward (``papo.rewards``) checks: reasoning inside
``<think> </think>``, then the final answer in ``\\boxed{}``. The instruction sentences are data, kept
verbatim with their source:

* ``published`` -- PAPO's ``math_perception`` template (``examples/format_prompt/math_perception.jinja`` of the
  released code, used by every released training script): the trimmed question, a blank line, then
  :data:`PAPO_INSTRUCTION`.
* ``easyr1_math`` -- EasyR1's ``math`` template (``examples/format_prompt/math.jinja`` of EasyR1, which PAPO
  forks): the trimmed question, ONE space, then :data:`EASYR1_MATH_INSTRUCTION` ("You FIRST think ... MUST
  BE ..."). Not used by the published runs.
* ``short`` -- a short instruction with the same required format, for the embedded tiny model (fewer prompt
  tokens for its 512-id vocabulary).

Templates are picked by name (``data.prompt_template=published``). A custom template may be given instead of a
name: any string containing the literal placeholder ``{problem}`` (substituted by plain string replacement, so
other braces such as ``\\boxed{}`` need no escaping). An unknown name is an error listing the valid names.

The released code renders its jinja file (stripped) with ``content`` = the question; ``| trim`` is Python's
``str.strip``, which :func:`build_prompt` applies to the question too, so the texts are identical.

Chat messages (:func:`chat_messages`): one user turn, optionally preceded by a system turn
(``data.system_prompt``; null = none, so the chat template's own default applies: Qwen2.5-VL's template adds
"You are a helpful assistant."). Image placement follows the question: each ``<image>`` placeholder
(:data:`IMAGE_PLACEHOLDER`) in the prompt marks where an image goes, in order, as EasyR1's
``RLHFDataset._build_messages`` (which the PAPO release uses) splits the prompt on it; a prompt without a
placeholder gets all its images first, then the text (the Qwen-VL convention). A prompt whose placeholder count
is neither 0 nor the row's image count is an error (:func:`placeholder_mismatch` names it; the datamodule
reports such a row as a bad row). Unlike EasyR1, an empty text piece between two placeholders is dropped too,
and a prompt without placeholders still gets its images (EasyR1 would send none).

:data:`TOKENIZER_CORPUS_TEMPLATES` are the texts the embedded tiny tokenizer was trained on
(:func:`papo.data.synthetic.synthetic_corpus`). They are frozen: changing them would change the tiny
tokenizer, hence the embedded model and every number measured with it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EASYR1_MATH_INSTRUCTION",
    "IMAGE_PLACEHOLDER",
    "PAPO_INSTRUCTION",
    "PROMPT_TEMPLATES",
    "PUBLISHED_INSTRUCTION",
    "SHORT_INSTRUCTION",
    "TOKENIZER_CORPUS_TEMPLATES",
    "build_prompt",
    "chat_messages",
    "placeholder_mismatch",
]

#: where an image goes inside a question (EasyR1 / verl / LLaMA-Factory convention)
IMAGE_PLACEHOLDER = "<image>"

#: PAPO's ``math_perception`` instruction (released code, examples/format_prompt/math_perception.jinja), verbatim.
PAPO_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> "
    "tags. Then, provide your final answer enclosed within \\boxed{}."
)

#: The instruction of the published runs: PAPO's.
PUBLISHED_INSTRUCTION = PAPO_INSTRUCTION

#: EasyR1's ``math`` instruction (EasyR1, examples/format_prompt/math.jinja), verbatim.
EASYR1_MATH_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}."
)

#: A short instruction with the same required answer format: fewer prompt tokens for the tiny local model.
SHORT_INSTRUCTION = "Think in <think></think>, answer in \\boxed{}."

#: name -> template; ``{problem}`` is replaced by the stripped question.
PROMPT_TEMPLATES: dict[str, str] = {
    "published": "{problem}\n\n" + PAPO_INSTRUCTION,
    "easyr1_math": "{problem} " + EASYR1_MATH_INSTRUCTION,
    "short": "{problem}\n\n" + SHORT_INSTRUCTION,
}

#: The templates whose prompts trained the embedded tiny tokenizer (frozen; see the module docstring).
TOKENIZER_CORPUS_TEMPLATES: tuple[str, ...] = (
    "{problem}\n\n" + EASYR1_MATH_INSTRUCTION,
    "{problem}\n\n" + SHORT_INSTRUCTION,
)

_PLACEHOLDER = "{problem}"


def build_prompt(problem: str, template: str = "published") -> str:
    """Return the user prompt for ``problem`` under ``template``.

    Args:
        problem: the question text (leading/trailing whitespace is stripped, as jinja's ``| trim`` does).
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


def placeholder_mismatch(prompt: str, num_images: int) -> str | None:
    """Why ``prompt`` cannot place ``num_images`` images (None when it can).

    A prompt places its images when it has no :data:`IMAGE_PLACEHOLDER` (images first) or exactly one per image.
    """
    count = str(prompt).count(IMAGE_PLACEHOLDER)
    if count in (0, num_images):
        return None
    return (
        f"the question has {count} {IMAGE_PLACEHOLDER} placeholder(s) but the row has {num_images} image(s); "
        f"give one placeholder per image, or none (images are then placed before the text)"
    )


def chat_messages(prompt: str, num_images: int, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The chat messages of one prompt: an optional system turn, then the user turn with its images placed.

    Args:
        prompt: the templated user text (:func:`build_prompt`), possibly with :data:`IMAGE_PLACEHOLDER` markers.
        num_images: images of the row.
        system_prompt: text of a system turn; None or "" = no system turn (the chat template's default applies).

    Raises:
        ValueError: the placeholder count is neither 0 nor ``num_images`` (:func:`placeholder_mismatch`).
    """
    reason = placeholder_mismatch(prompt, num_images)
    if reason is not None:
        raise ValueError(reason)
    content: list[dict[str, Any]]
    if IMAGE_PLACEHOLDER in prompt:
        content = []
        for i, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if i:
                content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
    else:
        content = [{"type": "image"} for _ in range(num_images)]
        content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages
