"""Diagnostics of the prepared GPU check (scripts/bench_gpu.py calls them; each returns a JSON-ready dict).

* :func:`sdpa_nan` decides what gives the (b) workload's NaN gradients (docs/gpu_performance.md, "The (b)
  NaN"): one forward + backward of a left-padded micro-batch shaped like (b)'s (longest prompt 320 tokens,
  rows with 319 padding columns, 512 response tokens: L = 832, 64 mod 128) with each SDPA backend forced in
  turn, with ``response_logps``'s row alignment (padding moved behind the response, no mask), the alignment
  with the padding mask kept, and neither (the padded positions' queries attend to nothing), and which text
  layers' parameter gradients are not finite.
* :func:`decode_split` splits a decode token's time at 32 rows: the graph replay alone, the step rule alone
  (on the replay's own logits, and how many rows' top-p nucleus lies outside the candidates), and the
  prefill's share of a rollout; with ``compiled``, the same for the step compiled by ``torch.compile``
  (``rollout.decoder=static_compiled``), with the seconds its compilation and capture took and whether its
  greedy tokens equal the uncompiled graph's.
* :func:`backward_profile`: wall time of one training micro-batch's forward and backward (the chunked-head
  log-prob pass) and ``torch.profiler``'s top operators by device time for each, so the backward phase's
  cost beyond the model's matmuls (attention kernel, masks, casts, recompute) is named; and the vision
  tower's own forward and backward on the micro-batch's images, with the number of SDPA calls its forward
  makes (with ``sdpa`` attention Hugging Face's Qwen2.5-VL vision blocks attend each window in a call of its
  own).
* :func:`trainer_precision` runs an RL step under a Lightning precision (the fp32 master weights + bf16-mixed
  run of the check).
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

#: the (b) micro-batch the NaN diagnostic rebuilds: longest prompt, response length, rows (see module doc)
NAN_SHAPE = {"prompt": 320, "response": 512, "rows": 8}
NAN_SHAPE_TINY = {"prompt": 20, "response": 12, "rows": 4}
_LAYER = re.compile(r"language_model\.layers\.(\d+)\.|model\.layers\.(\d+)\.")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def padded_batch(shape: dict[str, int], device: Any, seed: int = 0) -> dict[str, Any]:
    """Text-only ``response_logps`` inputs: left-padded prompts from 1 token to the longest, right-padded
    responses of full and shorter lengths; ids in [10, 400) (inside the stand-in tokenizer)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, P, T = shape["rows"], shape["prompt"], shape["response"]
    lengths = torch.linspace(1, P, n).round().long()  # 1 (P - 1 padding columns) ... P
    prompt_mask = (torch.arange(P)[None, :] >= (P - lengths)[:, None]).long()
    prompt_ids = torch.randint(10, 400, (n, P), generator=g) * prompt_mask
    r_len = torch.full((n,), T)
    r_len[1::2] = T // 2 + torch.arange(n // 2)  # every other row ends early
    response_mask = (torch.arange(T)[None, :] < r_len[:, None]).long()
    response_ids = torch.randint(10, 400, (n, T), generator=g) * response_mask
    out = dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
    )
    return {k: v.to(device) for k, v in out.items()} | {"visual": {}}


def layer_finiteness(model: Any) -> dict[str, Any]:
    """Which parameters' gradients hold NaN / inf: the text layer indices (the highest is where backward met
    it first), the count, and the first other names."""
    layers, others, n_bad = set(), [], 0
    for name, p in model.named_parameters():
        if p.grad is None or bool(p.grad.isfinite().all()):
            continue
        n_bad += 1
        m = _LAYER.search(name)
        if m:
            layers.add(int(m.group(1) or m.group(2)))
        elif len(others) < 6:
            others.append(name)
    return {
        "params_nonfinite": n_bad,
        "layers_nonfinite": sorted(layers),
        "first_layer_in_backward": max(layers) if layers else None,
        "other_params_nonfinite": others,
    }


def sdpa_nan(model: Any, suppress: Any, device: Any, tiny: bool) -> dict[str, Any]:
    """Forward + backward of one left-padded (b)-shaped micro-batch per (SDPA backend, row alignment)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import papo.models.logprobs as logprobs

    shape = NAN_SHAPE_TINY if tiny else NAN_SHAPE
    batch = padded_batch(shape, device)
    if device.type == "cuda":
        backends = {
            "default": None,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION,
            "math": SDPBackend.MATH,
        }
    else:
        backends = {"default": None, "math": SDPBackend.MATH}
    weights = torch.linspace(0.5, 1.5, shape["response"], device=device)
    tokens = batch["response_mask"].sum()
    originals = logprobs.aligns_rows, logprobs.padding_trails
    out: dict[str, Any] = {"shape": shape, "cases": {}}
    model.train()
    # aligned: padding behind the response, no mask (causal SDPA); aligned_masked: the same with the padding
    # mask kept (no empty row); left_padded: the mask with the padded positions' empty rows
    for name, backend in backends.items():
        for layout in ("aligned", "aligned_masked", "left_padded"):
            key = f"{name}/{layout}"
            model.zero_grad(set_to_none=True)
            if layout == "left_padded":
                logprobs.aligns_rows = lambda m: False
            if layout == "aligned_masked":
                logprobs.padding_trails = lambda mask: False
            t = time.perf_counter()
            try:
                ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
                with ctx:
                    logps = logprobs.response_logps(model, **batch, suppress_ids=suppress, chunk_tokens=4096)
                    loss = (logps.float() * weights).sum() / tokens
                    loss.backward()
                _sync(device)
                grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
                norm = float(torch.stack(grads).norm()) if grads else None
                case = {"loss": float(loss), "grad_norm": norm, **layer_finiteness(model)}
            except Exception as err:  # a backend that cannot run this mask says so
                case = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            finally:
                logprobs.aligns_rows, logprobs.padding_trails = originals
            case["seconds"] = round(time.perf_counter() - t, 2)
            out["cases"][key] = case
    model.zero_grad(set_to_none=True)
    bad = [
        k
        for k, c in out["cases"].items()
        if c.get("grad_norm") is not None and c["grad_norm"] != c["grad_norm"]
    ]
    out["nan_cases"] = bad
    return out


def decode_split(
    model: Any, gen: Any, inputs: dict[str, Any], device: Any, tokens: int, G: int, compiled: bool = False
) -> dict[str, Any]:
    """Milliseconds per token of a static-cache rollout of ``inputs`` x ``G`` rows, ``tokens`` forced tokens
    at T=1.0 / top-p 0.99: the whole call, the replay alone, the step rule alone, the prefill's share (with
    ``compiled``: of the torch.compile'd step, plus its compile + capture seconds and greedy parity)."""
    import torch

    from papo.rollout.hf_generate import GenerationConfig
    from papo.rollout.static_decode import release_graphs, row_bucket, static_generate, step_graphs
    from papo.rollout.token_sampling import TOP_P_CANDIDATES, StepRules, next_tokens

    special = (gen.eos_ids, gen.pad_id, gen.suppress_ids)
    capture = device.type == "cuda"
    model.eval()

    def cfg(n: int, temperature: float = 1.0) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=n, min_new_tokens=n, temperature=temperature, top_p=0.99, num_samples=G
        )

    last: dict[str, Any] = {}  # the latest call's (ids, mask)

    def call(n: int, compile_step: bool = compiled, temperature: float = 1.0) -> float:
        _sync(device)
        t = time.perf_counter()
        last["out"] = static_generate(
            model, inputs, cfg(n, temperature), *special, G, capture=capture, compile_step=compile_step
        )
        _sync(device)
        return time.perf_counter() - t

    extra: dict[str, Any] = {}
    if compiled:  # greedy tokens of the uncompiled graph, then the compiled one's (compile + capture timed)
        release_graphs(model)
        call(tokens, False, 0.0)
        plain = last["out"][0]
        release_graphs(model)
        extra["compile_and_capture_s"] = call(tokens, True, 0.0)
        extra["greedy_tokens_equal_uncompiled"] = bool(torch.equal(last["out"][0], plain))
    call(tokens), call(1)  # capture, warm-up
    whole = statistics.median(call(tokens) for _ in range(2))
    one = statistics.median(call(1) for _ in range(2))  # prefill, cache copy, one step
    rows = inputs["input_ids"].shape[0] * G
    graph = step_graphs(model)[row_bucket(rows)]

    def per_token(fn: Any) -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(tokens):
            fn()
        _sync(device)
        return 1000 * (time.perf_counter() - t) / tokens

    with torch.no_grad():  # as in static_generate (a compiled step's guards include the grad mode)
        replay = per_token(graph.step)
        logits = graph.step()[:rows].clone()
    rules = StepRules.build(cfg(tokens), *special, device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    rule = per_token(lambda: next_tokens(logits.clone(), tokens, unfinished.fill_(True), rules))
    probs = logits.clone()
    probs[:, rules.suppress] = float("-inf")
    probs = probs.softmax(-1)
    k = min(TOP_P_CANDIDATES, probs.shape[-1])
    outside = int((probs.topk(k, dim=-1).values.sum(-1) < 0.99).sum())
    whole_ms = 1000 * whole / tokens
    return {
        **extra,
        "rows": rows,
        "bucket": row_bucket(rows),
        "tokens": tokens,
        "captured": graph.graph is not None,
        "compiled": graph.compiled is not None,
        "ms_per_token_whole_call": whole_ms,
        "ms_per_token_replay": replay,
        "ms_per_token_step_rule": rule,
        "ms_prefill_and_first_step": 1000 * one,
        "ms_per_token_prefill_share": 1000 * one / tokens,
        "ms_per_token_rest": whole_ms - replay - rule - 1000 * one / tokens,
        "rows_nucleus_outside_candidates": outside,  # these rows' top-p sorts the whole vocabulary
    }


def backward_profile(model: Any, batch: dict[str, Any], suppress: Any, device: Any, chunk: int) -> dict:
    """Forward and backward of one micro-batch (``batch``: ``response_logps``'s inputs), timed, then
    profiled: the top operators by self device time (self CPU time on CPU) of each."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from papo.models.logprobs import response_logps

    cuda = device.type == "cuda"
    model.train()
    mask = batch["response_mask"]
    weights = torch.linspace(0.5, 1.5, mask.shape[1], device=device)

    def fwd_bwd(prof: bool = False) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        with record_function("papo_forward") if prof else contextlib.nullcontext():
            logps = response_logps(model, **batch, suppress_ids=suppress, chunk_tokens=4096)
            loss = (logps.float() * weights).sum() / mask.sum()
            _sync(device)
        t1 = time.perf_counter()
        with record_function("papo_backward") if prof else contextlib.nullcontext():
            loss.backward()
            _sync(device)
        return t1 - t0, time.perf_counter() - t1

    fwd_bwd()  # warm-up
    timed = [fwd_bwd() for _ in range(2)]
    vision = _vision_fwd_bwd(model, batch["visual"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fwd_bwd(prof=True)
    model.zero_grad(set_to_none=True)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if not e.key.startswith("papo_")]
    total = sum(getattr(e, attr, 0) for e in events) or 1
    top = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:20]
    return {
        "rows": int(mask.shape[0]),
        "response_tokens": int(mask.sum()),
        "sequence_tokens": int(batch["prompt_mask"].sum() + mask.sum()),
        "forward_s": statistics.median(f for f, _ in timed),
        "backward_s": statistics.median(b for _, b in timed),
        "vision": vision,
        "profile_time": attr,
        "top_ops": [
            {
                "op": e.key[:80],
                "calls": e.count,
                "self_ms": getattr(e, attr, 0) / 1000,
                "share": getattr(e, attr, 0) / total,
            }
            for e in top
        ],
    }


def _vision_fwd_bwd(model: Any, visual: dict[str, Any]) -> dict[str, Any]:
    """The vision tower alone on ``visual``'s images: forward and backward seconds (median of 2 after a
    warm-up) and the SDPA calls of one forward."""
    import torch

    from papo.models.loading import hf_model

    tower = hf_model(model).model.visual
    pixels = visual["pixel_values"].to(next(tower.parameters()).dtype)
    grid = visual["image_grid_thw"]
    device = pixels.device
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return sdpa(*args, **kwargs)

    def once() -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        out = tower(pixels, grid_thw=grid)
        feats = getattr(out, "pooler_output", out)
        loss = feats.float().square().mean()
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        return t1 - t0, time.perf_counter() - t1

    torch.nn.functional.scaled_dot_product_attention = counting
    try:
        once()  # warm-up, and the calls of one forward
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    forward_calls = calls[0]
    timed = [once() for _ in range(2)]
    model.zero_grad(set_to_none=True)
    return {
        "images": int(grid.shape[0]),
        "patches": int(pixels.shape[0]),
        "sdpa_calls_forward": forward_calls,
        "forward_s": statistics.median(f for f, _ in timed),
        "backward_s": statistics.median(b for _, b in timed),
    }


@contextlib.contextmanager
def trainer_precision(precision: str) -> Iterator[list[str]]:
    """Every ``lightning.Trainer`` built inside runs with ``precision`` (scripts/bench.py builds its own);
    yields the list of the built trainers' precisions."""
    import lightning

    original = lightning.Trainer
    built: list[str] = []

    def trainer(*args: Any, **kwargs: Any) -> Any:
        made = original(*args, **{**kwargs, "precision": precision})
        built.append(str(made.precision))
        return made

    lightning.Trainer = trainer
    try:
        yield built
    finally:
        lightning.Trainer = original
