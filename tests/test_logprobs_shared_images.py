"""Log-prob passes encode each distinct image once (papo.models.logprobs.visual_model_kwargs): the G rows of a
group reuse their prompt's image features, with the same log-probs and the same gradients as encoding the
image once per row; models without ``mm_encoder_outputs`` get the pixels repeated per row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import papo.models.logprobs as logprobs
from papo.models.loading import generation_suppress_token_ids, load_policy
from papo.models.logprobs import response_logps, shares_image_features
from papo.models.stand_in import ensure_stand_in
from papo.rollout.collect import Generator
from papo.rollout.hf_generate import GenerationConfig
from papo.rollout.inputs import collate_visual
from test_rollout_generation import _batch, _reward


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])  # Qwen3-VL adds deepstack features
def rollout(request, cache_dir: Path):
    torch.set_num_threads(2)
    model, processor = load_policy(ensure_stand_in(request.param, cache_dir / "models"))
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 12)
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0, top_p=1.0, top_k=0, num_samples=4)
    torch.manual_seed(0)
    exp, _ = gen.rollout(model, _batch(3), cfg, _reward)
    return model, exp


def _per_row_visual(exp) -> dict[str, torch.Tensor]:
    """The batch as before the change: every row's pixels, one copy per row."""
    return {
        "pixel_values": torch.cat([v["pixel_values"] for v in exp.visual]),
        "image_grid_thw": torch.cat([v["image_grid_thw"] for v in exp.visual]),
    }


def _logps_and_grads(model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logps = response_logps(model, **inputs)
    (logps * torch.linspace(0.5, 1.5, logps.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads


def test_shared_encoding_matches_per_row_encoding_and_runs_the_tower_once_per_image(rollout) -> None:
    model, exp = rollout
    assert shares_image_features(model)  # both take mm_encoder_outputs in this transformers
    shared = exp.model_inputs()
    assert shared["visual"]["image_index"].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # 3 images, G = 4
    per_row = {**shared, "visual": _per_row_visual(exp)}
    patch_rows: list[int] = []
    hook = model.model.visual.register_forward_hook(lambda m, a, o: patch_rows.append(a[0].shape[0]))
    try:
        a, grads_a = _logps_and_grads(model, shared)
        b, grads_b = _logps_and_grads(model, per_row)
    finally:
        hook.remove()
    assert patch_rows[0] * 4 == patch_rows[1]  # each image through the tower once instead of G times
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert any(n.startswith("model.visual") for n in grads_a)  # the vision tower is trained through it
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-5, rtol=1e-4, msg=n)


def test_models_without_precomputed_features_get_the_pixels_per_row(rollout, monkeypatch) -> None:
    model, exp = rollout
    shared = exp.model_inputs()
    kwargs = logprobs.visual_model_kwargs(model, shared["visual"])
    assert "mm_encoder_outputs" in kwargs and "pixel_values" not in kwargs
    monkeypatch.setattr(logprobs, "shares_image_features", lambda m: False)
    kwargs = logprobs.visual_model_kwargs(model, shared["visual"])
    expected = _per_row_visual(exp)
    assert torch.equal(kwargs["pixel_values"], expected["pixel_values"])
    assert torch.equal(kwargs["image_grid_thw"], expected["image_grid_thw"])
    with torch.no_grad():
        torch.testing.assert_close(
            response_logps(model, **shared), response_logps(model, **{**shared, "visual": expected})
        )


def test_collate_matches_rows_by_identity_with_several_images_per_row() -> None:
    def row(n_images: int, fill: float) -> dict[str, torch.Tensor]:
        grid = torch.tensor([[1, 2, 2]] * n_images)  # 4 patch rows per image
        return {"pixel_values": torch.full((4 * n_images, 3), fill), "image_grid_thw": grid}

    a, b = row(2, 1.0), row(1, 2.0)
    equal_but_distinct = row(1, 2.0)  # same values, another prompt: not merged
    out = collate_visual([a, a, None, b, a, equal_but_distinct, b])
    assert out["image_index"].tolist() == [0, 1, 0, 1, 2, 0, 1, 3, 2]
    assert out["pixel_values"].shape == (4 * 4, 3) and out["image_grid_thw"].shape == (4, 3)
    assert collate_visual([None, None]) == {}
