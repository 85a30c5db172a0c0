"""The static-cache decode loop (papo.rollout.static_decode) on CPU, where it runs step by step without graph
capture: the lean loop's exact tokens (greedy, sampled with the same seed, rows ending at different steps),
one step graph per row bucket reused across calls and rebuilt when a rollout needs more length or the weights
move, the fallbacks (sharded weights, non-sdpa attention, a failed capture) logged once, the decoder choice,
and a decode step free of host synchronisation and of graph breaks (the CPU proxies for "capturable").
The parity and on-policy tests shared with the lean loop are in tests/test_rollout_lean_decode.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import papo.rollout.static_decode as static_decode
from papo.models.loading import generation_suppress_token_ids, load_policy
from papo.models.stand_in import ensure_stand_in
from papo.rollout.collect import Generator, choose_decoder
from papo.rollout.hf_generate import GenerationConfig, hf_generate
from papo.rollout.lean_decode import lean_generate
from papo.rollout.static_decode import (
    CHECK_EVERY,
    length_bucket,
    release_graphs,
    row_bucket,
    static_generate,
    step_graphs,
)
from test_rollout_lean_decode import _ragged_batch


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def policy(request, cache_dir: Path):
    torch.set_num_threads(2)
    model, processor = load_policy(ensure_stand_in(request.param, cache_dir / "models"))
    return model.eval(), processor


def _inputs(processor) -> tuple[dict, Generator]:
    """One row per prompt (3 ragged prompts with images), as a rollout chunk passes whole groups."""
    gen = Generator(processor, generation_suppress_token_ids(processor), 512, 12)
    enc, per_visual, _ = gen.encode(_ragged_batch(), masked=False)
    inputs = dict(enc)
    inputs["pixel_values"] = torch.cat([v["pixel_values"] for v in per_visual])
    inputs["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in per_visual])
    return inputs, gen


def test_buckets() -> None:
    assert [row_bucket(n) for n in (1, 3, 8, 9, 64, 65, 256, 257)] == [1, 4, 8, 16, 64, 128, 256, 320]
    assert [length_bucket(n) for n in (1, 128, 129, 812)] == [128, 128, 256, 896]


def test_rows_that_end_at_different_steps_match_the_lean_loop(policy) -> None:
    """An end token that the rows sample at different steps: the same ids, masks and width as the lean loop,
    which stops at the step the last row ended (the static loop checks every CHECK_EVERY tokens)."""
    model, processor = policy
    inputs, gen = _inputs(processor)
    cfg = GenerationConfig(max_new_tokens=3 * CHECK_EVERY, temperature=1.0)

    def run(decode, eos: int):
        torch.manual_seed(5)
        return decode(model, inputs, cfg, eos, gen.pad_id, gen.suppress_ids, 2)

    row0 = run(lean_generate, -1)[0][0].tolist()  # no end token: the draws of the seed
    k = next(i for i in range(2, len(row0)) if row0[i] not in row0[:i])
    eos = row0[k]  # row 0 ends at its (k+1)-th token; other rows wherever they draw it, or never
    lean, static = run(lean_generate, eos), run(static_generate, eos)
    lengths = lean[1].sum(1)
    assert int(lengths[0]) == k + 1 and len(set(lengths.tolist())) > 1 and lean[1].shape[0] == 6
    assert torch.equal(static[0], lean[0]) and torch.equal(static[1], lean[1])
    assert step_graphs(model)  # the static loop ran (no fallback to the lean loop)
    release_graphs(model)


def test_sampled_tokens_equal_the_lean_loops_with_the_same_seed(policy) -> None:
    """The same step rule and the same random draws: identical samples (G = 4, top-p, min_new_tokens)."""
    model, processor = policy
    inputs, gen = _inputs(processor)
    cfg = GenerationConfig(max_new_tokens=9, temperature=1.0, top_p=0.9, min_new_tokens=4)
    args = (model, inputs, cfg, gen.eos_ids, gen.pad_id, gen.suppress_ids, 4)
    torch.manual_seed(3)
    lean = lean_generate(*args)
    torch.manual_seed(3)
    static = static_generate(*args)
    assert torch.equal(static[0], lean[0]) and torch.equal(static[1], lean[1])
    assert len({tuple(r) for r in lean[0].tolist()}) > 3  # real samples, not copies
    assert step_graphs(model)  # the static loop ran (no fallback to the lean loop)
    release_graphs(model)


def test_one_step_graph_per_row_bucket_reused_and_rebuilt(policy, monkeypatch) -> None:
    model, processor = policy
    release_graphs(model)
    inputs, gen = _inputs(processor)
    P = inputs["input_ids"].shape[1]
    short = GenerationConfig(max_new_tokens=4, temperature=0.0)
    special = (gen.eos_ids, gen.pad_id, gen.suppress_ids)
    built: list[int] = []
    original = static_decode._new_step_graph
    monkeypatch.setattr(
        static_decode, "_new_step_graph", lambda *a, **k: built.append(a[1]) or original(*a, **k)
    )
    static_generate(model, inputs, short, *special, 2)  # 6 rows -> bucket 8
    (sg,) = step_graphs(model).values()
    assert (sg.rows, sg.length) == (8, length_bucket(P + 4))
    assert sg.cache.layers[0].keys.shape[0] == 8  # spare rows decode pad and are dropped
    static_generate(model, inputs, short, *special, 2)  # same bucket, same length: reused
    static_generate(model, inputs, short, *special, 1)  # 3 rows -> bucket 4: a second graph
    assert built == [8, 4] and sorted(step_graphs(model)) == [4, 8]
    longer = GenerationConfig(max_new_tokens=length_bucket(P + 4) - P + 1, temperature=0.0)
    static_generate(model, inputs, longer, *special, 2)  # needs more length: rebuilt
    assert built == [8, 4, 8] and step_graphs(model)[8].length > sg.length
    with torch.no_grad():  # the weights move to other memory (a reload): rebuilt, never replayed stale
        p = next(model.parameters())
        p.data = p.data.clone()
    static_generate(model, inputs, short, *special, 2)
    assert built == [8, 4, 8, 8]
    release_graphs(model)
    assert step_graphs(model) == {}


def test_autocast_steps_run_in_a_graph_of_their_own(policy) -> None:
    """Under autocast (Lightning's bf16-mixed) the static cache takes the prefill's dtypes (bf16 values; keys
    promoted by the rope), the step runs under the same autocast, and the graph is keyed by the autocast
    state."""
    model, processor = policy
    release_graphs(model)
    inputs, gen = _inputs(processor)
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    args = (model, inputs, cfg, gen.eos_ids, gen.pad_id, gen.suppress_ids, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean = lean_generate(*args)
        static = static_generate(*args)
    assert torch.equal(static[0], lean[0])
    (sg,) = step_graphs(model).values()
    assert sg.cache.layers[0].values.dtype == torch.bfloat16
    assert (True, torch.bfloat16) in sg.state
    static_generate(*args)  # no autocast: another state, a new static cache in fp32
    (sg,) = step_graphs(model).values()
    assert sg.cache.layers[0].values.dtype == torch.float32
    release_graphs(model)


class _WeightCasts(TorchDispatchMode):
    """Counts the casts (``_to_copy``) whose source is one of ``params``' memory."""

    def __init__(self, params) -> None:
        super().__init__()
        self.ptrs = {p.data_ptr() for p in params}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_to_copy" and args[0].data_ptr() in self.ptrs:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_fp32_weights_under_autocast_decode_from_bf16_copies_that_follow_the_optimiser(
    policy, monkeypatch
) -> None:
    """fp32 master weights under bf16 autocast: the step reads bf16 copies of the linear weights (a step
    casts no weight), refreshed at every call, so after an optimiser step (in place: the same graph) the
    greedy tokens are the lean loop's with the updated weights, and the sampled ones those of the step that
    casts every weight itself (in bf16 the static and lean loops' attention sums differ in the last bits,
    which can move a draw that falls on a boundary of the cumulative distribution)."""
    model, processor = policy
    release_graphs(model)
    inputs, gen = _inputs(processor)
    special = (gen.eos_ids, gen.pad_id, gen.suppress_ids)
    greedy = GenerationConfig(max_new_tokens=6, temperature=0.0)
    sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9)
    casts: list[int] = []
    original = static_decode._StepGraph.step

    def counted(self):
        with _WeightCasts(model.parameters()) as mode:
            out = original(self)
        casts.append(mode.casts)
        return out

    monkeypatch.setattr(static_decode._StepGraph, "step", counted)

    def both(cfg, G):
        out = []
        for decode in (lean_generate, static_generate):
            torch.manual_seed(4)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(decode(model, inputs, cfg, *special, G)[0])
        return out

    lean, static = both(greedy, 2)
    assert torch.equal(static, lean) and casts and set(casts) == {0}
    (sg,) = step_graphs(model).values()
    copies = static_decode._COPIES[model]
    assert sg.copies is copies and len(copies.slots) > 10
    lm_head = model.get_output_embeddings()
    assert lm_head.weight.dtype == torch.float32  # the layers hold their parameters again after the call

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**{k: v for k, v in inputs.items()}, use_cache=False).logits
    logits.float().logsumexp(-1).mean().backward()
    opt.step()  # in place: same memory, so the same graph; the copies must take the new values
    model.zero_grad(set_to_none=True)
    lean2, static2 = both(greedy, 2)
    assert not torch.equal(lean2, lean)  # the update changes the greedy tokens
    assert torch.equal(static2, lean2) and step_graphs(model)[sg.rows] is sg
    for _, _, src, copy in copies.slots:
        assert torch.equal(copy, src.detach().to(torch.bfloat16))
    _, static3 = both(sampled, 3)
    assert set(casts) == {0}
    monkeypatch.setattr(static_decode, "weight_copies", lambda m, a: None)
    release_graphs(model)
    _, casting = both(sampled, 3)
    assert torch.equal(static3, casting) and max(casts) > 10  # without copies: the casts per step
    release_graphs(model)


def test_early_stop_is_read_every_check_every_tokens(policy, monkeypatch) -> None:
    """Once every row has ended, at most CHECK_EVERY - 1 more steps run (no host read per token)."""
    model, processor = policy
    inputs, gen = _inputs(processor)
    cfg = GenerationConfig(max_new_tokens=4 * CHECK_EVERY, temperature=0.0)
    steps: list[int] = []
    original = static_decode._StepGraph.step
    monkeypatch.setattr(static_decode._StepGraph, "step", lambda self: steps.append(1) or original(self))
    one = {k: v[:1] for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
    one["pixel_values"] = inputs["pixel_values"][: int(inputs["image_grid_thw"][0].prod())]
    one["image_grid_thw"] = inputs["image_grid_thw"][:1]
    free, _ = lean_generate(model, one, cfg, -1, gen.pad_id, gen.suppress_ids)
    eos = int(free[0, 0])  # the prompt's first greedy token, taken as the end token: the row ends at once
    ids, _ = static_generate(model, one, cfg, eos, gen.pad_id, gen.suppress_ids)
    assert ids.tolist() == [[eos]]
    assert len(steps) == CHECK_EVERY - 1  # steps 1 .. CHECK_EVERY - 1 ran, then the read stopped the loop
    release_graphs(model)


class _HostSyncs(TorchDispatchMode):
    """Records the ops that make a GPU wait for the host to read a value (or size an output by data)."""

    SYNCING = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
        )
        if (
            name in self.SYNCING
            or bool_index
            or (name == "repeat_interleave" and func._overloadname == "Tensor")
        ):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _built_step_graph(model, processor):
    inputs, gen = _inputs(processor)
    release_graphs(model)
    static_generate(model, inputs, GenerationConfig(max_new_tokens=3, temperature=0.0), *(
        gen.eos_ids, gen.pad_id, gen.suppress_ids), 2)  # fmt: skip
    (sg,) = step_graphs(model).values()
    return sg, gen


def test_decode_step_and_step_rule_never_wait_for_the_host(policy) -> None:
    """What a CUDA graph cannot hold (and what would stall a GPU every token): no .item(), no data-sized
    outputs, in the model's decode step over the static cache nor in the shared step rule."""
    from papo.rollout.token_sampling import StepRules, next_tokens

    model, processor = policy
    sg, gen = _built_step_graph(model, processor)
    rules = StepRules(
        torch.tensor(gen.eos_ids), gen.pad_id, torch.tensor(gen.suppress_ids), temperature=1.0, top_k=5
    )
    unfinished = torch.ones(sg.rows, dtype=torch.bool)
    with torch.no_grad(), _HostSyncs() as syncs:
        logits = sg.step()
        next_tokens(logits, 0, unfinished, rules)
    assert syncs.seen == []
    with _HostSyncs() as probe:  # the detector does see a host read
        bool(unfinished.any())
    assert probe.seen
    release_graphs(model)


def test_decode_step_compiles_as_one_graph(policy) -> None:
    """torch.compile(fullgraph=True) traces the decode step without a graph break: no data-dependent Python
    control flow in it (the CPU proxy for CUDA-graph capture; the GPU check captures for real)."""
    model, processor = policy
    sg, _ = _built_step_graph(model, processor)
    torch._dynamo.reset()
    compiled = torch.compile(sg._forward, fullgraph=True, backend="eager")
    with torch.no_grad():
        eager = sg._forward()
        traced = compiled()
    torch.testing.assert_close(traced, eager)
    torch._dynamo.reset()
    release_graphs(model)


def test_compiled_step_gives_the_uncompiled_steps_tokens(policy) -> None:
    """rollout.decoder=static_compiled: the step compiled by torch.compile (Inductor) samples the same tokens
    as the uncompiled step, greedy and with the same seed (G = 2, top-p), and the compiled step is the one
    that ran."""
    model, processor = policy
    inputs, gen = _inputs(processor)
    torch._dynamo.reset()

    def run(compile_step: bool, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        release_graphs(model)
        torch.manual_seed(3)
        cfg = GenerationConfig(max_new_tokens=10, temperature=temperature, top_p=0.9)
        out = static_generate(
            model, inputs, cfg, gen.eos_ids, gen.pad_id, gen.suppress_ids, 2, compile_step=compile_step
        )
        (sg,) = step_graphs(model).values()
        assert (sg.compiled is not None) == compile_step
        return out

    for temperature in (0.0, 1.0):
        compiled, plain = run(True, temperature), run(False, temperature)
        assert torch.equal(compiled[0], plain[0]) and torch.equal(compiled[1], plain[1])
    torch._dynamo.reset()
    release_graphs(model)


def _fallback_setup(policy) -> tuple[tuple, tuple]:
    """Greedy static_generate arguments (5 tokens, G = 2), the lean loop's result for them, and no graph or
    logged message left from earlier tests."""
    model, processor = policy
    inputs, gen = _inputs(processor)
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.0)
    args = (model, inputs, cfg, gen.eos_ids, gen.pad_id, gen.suppress_ids, 2)
    lean = lean_generate(*args)
    static_decode._logged.clear()
    release_graphs(model)
    return args, lean


def test_a_step_that_does_not_compile_runs_uncompiled_and_says_why(policy, monkeypatch, caplog) -> None:
    model, _ = policy
    args, lean = _fallback_setup(policy)

    def no_inductor(fn, **kwargs):
        def failing():
            raise RuntimeError("Cannot find a working triton installation\nmore lines")

        return failing

    monkeypatch.setattr(torch, "compile", no_inductor)
    with caplog.at_level(logging.WARNING, logger="papo.rollout.static_decode"):
        first = static_generate(*args, compile_step=True)
        release_graphs(model)
        again = static_generate(*args, compile_step=True)
    assert torch.equal(first[0], lean[0]) and torch.equal(again[0], lean[0])
    assert [r.getMessage() for r in caplog.records] == [
        "rollout.decoder=static_compiled: torch.compile of the decode step failed (RuntimeError: Cannot find a "
        "working triton installation); the uncompiled step runs instead"
    ]
    (sg,) = step_graphs(model).values()
    assert sg.compiled is None
    release_graphs(model)


def test_fallbacks_to_the_lean_loop_are_logged_once(policy, monkeypatch, caplog) -> None:
    model, _ = policy
    args, lean = _fallback_setup(policy)

    def failing_capture(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(static_decode._StepGraph, "capture", failing_capture)
    with caplog.at_level(logging.WARNING, logger="papo.rollout.static_decode"):
        first = static_generate(*args, capture=True)
        again = static_generate(*args, capture=True)
    assert torch.equal(first[0], lean[0]) and torch.equal(again[0], lean[0])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "could not be captured" in msgs[0] and "stream is capturing" in msgs[0]
    assert step_graphs(model) == {}
    release_graphs(model)
    caplog.clear()
    monkeypatch.setattr(static_decode, "weights_sharded", lambda m: True)
    with caplog.at_level(logging.WARNING, logger="papo.rollout.static_decode"):
        static_generate(*args)
        static_generate(*args)
    assert [r.getMessage() for r in caplog.records] == [
        "rollout.decoder=static: the weights are sharded (FSDP / ZeRO-3), and their forward gathers them; "
        "decoding with the lean loop instead"
    ]
    monkeypatch.setattr(static_decode, "weights_sharded", lambda m: False)
    monkeypatch.setattr(static_decode, "prepared_masks", lambda m: False)
    assert "sdpa" in static_decode.static_unsupported(model)
    assert step_graphs(model) == {}


def test_choose_decoder() -> None:
    import papo.rollout.collect as collect

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_decoder("auto", cpu, False) is lean_generate
    assert choose_decoder("auto", cuda, False) is static_generate
    assert choose_decoder("static", cpu, False) is static_generate
    compiled = choose_decoder("static_compiled", cuda, False)
    assert compiled.func is static_generate and compiled.keywords == {"compile_step": True}
    assert choose_decoder("static_compiled", cuda, True) is hf_generate
    assert choose_decoder("lean", cuda, False) is lean_generate
    assert choose_decoder("static", cuda, True) is hf_generate  # sharded ranks step together
    assert choose_decoder("generate", cpu, False) is collect.hf_generate
