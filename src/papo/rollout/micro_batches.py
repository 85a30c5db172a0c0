"""Which rows go into each micro-batch of a log-prob or update pass: a fixed number of rows, or a token budget.

A forward over a micro-batch computes ``rows x (longest prompt + longest response)`` token positions: the
log-prob pass drops the columns that are padding in every row of the micro-batch
(:func:`papo.models.logprobs.trim_padding`), so whatever padding remains is set by the micro-batch's longest
prompt and longest response. With a token budget (``algo.micro_batch_tokens``) rows are sorted by their
prompt + response length and packed greedily so that this padded size stays within the budget: similar lengths
share a micro-batch (little padding), and short rows fill larger micro-batches than long ones. verl's
``use_dynamic_bsz`` / ``ppo_max_token_len_per_gpu`` does the same job (it balances the sum of lengths over a
chosen number of micro-batches instead of capping the padded size).

Data-parallel ranks split to the same number of micro-batches (:func:`split_to_count`). The split changes the
maths only through the loss normaliser: with the global token mean, or the sequence-mean
modes with per-sequence weights (``papo.models.papo_module``), the update is the same for any split (up to
float summation order); under the released per-micro-batch mean it is not, so the config refuses the budget
there (:mod:`papo.config_validation`).

Pure functions of lengths: no tensors of the model, no config.
"""

from __future__ import annotations

from collections.abc import Sequence


def fixed_size_split(n_rows: int, rows_per_micro_batch: int) -> list[list[int]]:
    """Rows in their order, ``rows_per_micro_batch`` at a time (the last micro-batch may be smaller)."""
    if rows_per_micro_batch < 1:
        raise ValueError(f"rows_per_micro_batch={rows_per_micro_batch} must be >= 1")
    return [
        list(range(s, min(s + rows_per_micro_batch, n_rows))) for s in range(0, n_rows, rows_per_micro_batch)
    ]


def padded_tokens(prompt_lengths: Sequence[int], response_lengths: Sequence[int], rows: Sequence[int]) -> int:
    """Token positions a forward over ``rows`` computes: rows x (longest prompt + longest response)."""
    if not rows:
        return 0
    return len(rows) * (max(prompt_lengths[i] for i in rows) + max(response_lengths[i] for i in rows))


def token_budget_split(
    prompt_lengths: Sequence[int],
    response_lengths: Sequence[int],
    max_tokens: int,
    max_rows: int | None = None,
) -> list[list[int]]:
    """Micro-batches of rows sorted by prompt + response length (longest first), each as large as it can be
    with :func:`padded_tokens` <= ``max_tokens`` and at most ``max_rows`` rows.

    A row longer than the budget on its own gets a micro-batch of its own (never dropped). Every row appears
    exactly once. Ties keep the original order (a stable sort), so the plan is deterministic.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    if len(prompt_lengths) != len(response_lengths):
        raise ValueError(f"{len(prompt_lengths)} prompt lengths but {len(response_lengths)} response lengths")
    order = sorted(range(len(prompt_lengths)), key=lambda i: -(prompt_lengths[i] + response_lengths[i]))
    out: list[list[int]] = []
    current: list[int] = []
    longest_prompt = longest_response = 0
    for i in order:
        p = max(longest_prompt, prompt_lengths[i])
        r = max(longest_response, response_lengths[i])
        full = max_rows is not None and len(current) >= max_rows
        if current and (full or (len(current) + 1) * (p + r) > max_tokens):
            out.append(current)
            current, p, r = [], prompt_lengths[i], response_lengths[i]
        current.append(i)
        longest_prompt, longest_response = p, r
    if current:
        out.append(current)
    return out


def split_to_count(
    plan: list[list[int]], prompt_lengths: Sequence[int], response_lengths: Sequence[int], count: int
) -> list[list[int]]:
    """``plan`` with its largest micro-batches (by :func:`padded_tokens`) halved until it has ``count`` of them.

    Data-parallel ranks must run the same number of forwards and backwards (DDP all-reduces gradients in
    every backward, FSDP gathers weights in every forward), while a token budget packs each rank's rows into
    as many micro-batches as their lengths need: every rank splits to the largest count of any rank. Halving
    keeps the rows' sorted order, so each half stays within the budget.
    """
    plan = [list(mb) for mb in plan]
    while len(plan) < count:
        splittable = [i for i, mb in enumerate(plan) if len(mb) > 1]
        if not splittable:
            raise ValueError(f"cannot split {sum(map(len, plan))} rows into {count} micro-batches")
        i = max(splittable, key=lambda j: padded_tokens(prompt_lengths, response_lengths, plan[j]))
        mb = plan[i]
        half = (len(mb) + 1) // 2
        plan[i : i + 1] = [mb[:half], mb[half:]]
    return plan


def plan_micro_batches(
    prompt_lengths: Sequence[int],
    response_lengths: Sequence[int],
    max_rows: int,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """The row indices of each micro-batch: :func:`token_budget_split` when ``max_tokens`` is set (rows also
    capped at ``max_rows``), else :func:`fixed_size_split` by ``max_rows``."""
    if max_tokens is None:
        return fixed_size_split(len(prompt_lengths), max_rows)
    return token_budget_split(prompt_lengths, response_lengths, max_tokens, max_rows)
