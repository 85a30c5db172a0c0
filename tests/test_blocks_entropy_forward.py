"""What the method blocks take from the model besides the log-probs: the full-vocabulary entropy of the log-prob
passes (``response_logps(with_entropy=True)``, NoisyRollout's entropy bonus: the same values and gradients on
the chunked LM head and the full-logits forward, equal to the entropy of the model's own logits, 0 at padding,
the log-probs unchanged) and the hidden states of the response positions (``response_hidden``, the
full-distribution sensitivity signals: through the LM head they give the log-probs of the forward)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from papo.algos.entropy import entropy_from_logits
from papo.models.loading import load_policy
from papo.models.logprobs import chunked_token_logps, response_hidden, response_logps, token_logps_from_logits
from papo.models.stand_in import ensure_stand_in
from test_rollout_generation import ragged_rollout


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_entropy_equals_the_entropy_of_the_full_logits(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 11)
    hidden = torch.randn(7, 6, generator=g, requires_grad=True)
    targets = torch.randint(3, 11, (7,), generator=g)
    suppress = torch.tensor([2, 9])
    out = chunked_token_logps(head, hidden, targets, 0.7, suppress, chunk, with_entropy=True)  # (7, 2)
    expected = entropy_from_logits(head(hidden), 0.7, suppress)
    torch.testing.assert_close(out[:, 1], expected, atol=1e-6, rtol=1e-5)
    (grad_chunked,) = torch.autograd.grad(out[:, 1].sum(), hidden)
    (grad_full,) = torch.autograd.grad(expected.sum(), hidden)
    torch.testing.assert_close(grad_chunked, grad_full, atol=1e-6, rtol=1e-5)
    plain = chunked_token_logps(head, hidden, targets, 0.7, suppress, chunk)
    torch.testing.assert_close(out[:, 0], plain)


@pytest.fixture(scope="module")
def rollout(cache_dir: Path):
    torch.set_num_threads(2)
    model, processor = load_policy(ensure_stand_in("qwen2_5_vl", cache_dir / "models"))
    return model, *ragged_rollout(model, processor, num_prompts=2, num_samples=3)


def test_response_entropies_on_both_paths(rollout) -> None:
    model, exp, suppress = rollout
    inputs, kw = exp.model_inputs(), {"temperature": 0.8, "suppress_ids": suppress}
    with torch.no_grad():
        logps_full, ent_full = response_logps(model, **inputs, with_entropy=True, **kw)
        logps_chunked, ent_chunked = response_logps(model, **inputs, chunk_tokens=4, with_entropy=True, **kw)
        plain = response_logps(model, **inputs, **kw)
    torch.testing.assert_close(ent_chunked, ent_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logps_full, plain)
    torch.testing.assert_close(logps_chunked, plain, atol=1e-5, rtol=1e-5)
    live = exp.response_mask > 0
    assert bool((ent_full[~live] == 0).all()) and bool((ent_full[live] > 0).all())
    # an entropy is at least the sampled token's surprisal's lower bound 0 and at most log(live vocabulary)
    vocab = model.get_output_embeddings().weight.shape[0] - len(suppress)
    assert float(ent_full.max()) <= torch.log(torch.tensor(float(vocab))) + 1e-4


def test_response_hidden_states_give_the_log_probs_through_the_head(rollout) -> None:
    model, exp, suppress = rollout
    inputs = exp.model_inputs()
    with torch.no_grad():
        hidden = response_hidden(model, **inputs)  # (N, T, H)
        logps = response_logps(model, **inputs, temperature=0.8, suppress_ids=suppress)
        head = model.get_output_embeddings()
        from_hidden = token_logps_from_logits(head(hidden), exp.response_ids, 0.8, suppress)
    live = exp.response_mask > 0
    torch.testing.assert_close(from_hidden[live], logps[live], atol=1e-5, rtol=1e-5)
    assert bool((hidden[~live] == 0).all()) and hidden.shape[:2] == exp.response_ids.shape
