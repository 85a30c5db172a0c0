"""Decoding over a static KV cache, the decode step replayed as a CUDA graph (``rollout.decoder=static``, and
``auto`` on a GPU).

Why: on a GPU the lean loop (:mod:`papo.rollout.lean_decode`) launches a few hundred small kernels per token
from Python, so a 3B model decodes at the pace of the launches, not of the GPU (docs/gpu_performance.md).
Here the single-token step (the Hugging Face model's own ``forward`` over ``transformers``' ``StaticCache``) is
captured once as a ``torch.cuda.CUDAGraph`` and replayed for every token: one launch per token.

How, per call:

1. the prompts are prefilled as in the lean loop (one prefill per prompt, dynamic cache), and their keys and
   values copied into a static cache of ``rows x length`` slots, each prompt's repeated for its G samples;
2. the cache, the step's inputs (token, 3D rope positions, a boolean key mask over the static length) and its
   output logits live in fixed buffers, so every replay reads and writes the same memory. The rows are
   bucketed (:func:`row_bucket`: spare rows decode a pad token and are dropped) and the length is rounded up
   (:func:`length_bucket`), so one graph per row bucket serves every rollout of a run; it is captured again
   only when a rollout needs more length, the weights moved to other memory, or the autocast state changed;
3. between replays, outside the graph: the shared step rule :func:`papo.rollout.token_sampling.next_tokens`
   (the same suppression, EOS and sampling as the lean loop, so the same random draws), the next token, the
   rope positions + 1 and the key mask's next column. Whether every row has ended is read every
   :data:`CHECK_EVERY` tokens, not every token (each read waits for the GPU); the steps after the last row
   ended only emit pad, and the result is cut to the lean loop's width.

Same tokens as the lean loop (greedy parity and on-policy log-probs tested on Qwen2.5-VL and Qwen3-VL in
``tests/test_rollout_static_decode.py``); the masked slots of the static length add exact zeros to attention,
so the values differ from the lean loop's only by floating-point summation order.

Where capture is not possible, the lean loop runs instead and the reason is logged once: no CUDA device (on
CPU the static cache runs step by step, without capture, when ``rollout.decoder=static`` asks for it: this is
what CI tests), sharded weights (FSDP / DeepSpeed ZeRO-3: their forwards gather parameters), attention other
than ``sdpa`` or sliding windows (the step needs a ready-made boolean key mask), or a forward whose capture
fails (a host synchronisation or data-dependent control flow inside it).

``rollout.decoder=static_compiled`` also compiles the step with ``torch.compile`` (Inductor, ``fullgraph``,
static shapes: one compilation per row bucket and length) before it is captured, as SGLang's
``--enable-torch-compile`` does: Inductor fuses the norms, rope, activations and residual adds of every layer
into a few kernels, so the replayed graph launches fewer, larger kernels. The compiled step computes the
same function (tested on CPU: the uncompiled step's greedy tokens); its cost is the compilation, once per
bucket. Where compilation fails (no Triton on the GPU, no C++ compiler on the CPU), the uncompiled step runs
and the reason is logged once.

Graphs hold their static caches and memory pools until :func:`release_graphs` or the model is freed. They
record the forward as it ran at capture: a LoRA policy decodes with its adapters enabled, as rollouts do.

Under autocast with weights of another dtype (fp32 master weights under ``bf16-mixed``, the published configs'
default) the step reads :class:`WeightCopies`: the autocast-dtype copy of every ``nn.Linear`` weight and bias,
at fixed addresses, refreshed from the live weights at the start of every call (so after each optimiser
step), which is the value autocast's own cast would give. A replay then casts nothing; without the copies,
every replay would cast every weight it reads (autocast's cast cache is off in the step: a cached copy would
go stale after the optimiser step), a read of all fp32 weights per token. Only the linear layers' parameters
are copied, as autocast casts those and nothing else of the step (norm weights and embeddings keep their
dtype, and a tied LM head keeps the embedding's fp32 parameter for the embedding lookup).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from papo.models.loading import hf_model
from papo.models.logprobs import weights_sharded
from papo.rollout.hf_generate import GenerationConfig, finish_responses
from papo.rollout.lean_decode import cache_kwarg, lean_generate, prefill, prepared_masks
from papo.rollout.token_sampling import StepRules, next_tokens

log = logging.getLogger(__name__)

#: tokens between two reads of "has every row ended?" (each read waits for the GPU to catch up)
CHECK_EVERY = 8
#: the static length is rounded up to a multiple of this (prompt + max_new_tokens), so rollouts of slightly
#: different prompt lengths reuse one graph
LENGTH_STEP = 128


def row_bucket(n: int) -> int:
    """Rows of the graph that serves ``n`` rows: the next power of two up to 64, then a multiple of 64."""
    if n < 1:
        raise ValueError(f"n={n} rows")
    return 1 << (n - 1).bit_length() if n <= 64 else -(-n // 64) * 64


def length_bucket(n: int) -> int:
    """Static cache length for ``n`` = prompt + max_new_tokens positions: ``n`` rounded up to LENGTH_STEP."""
    return -(-n // LENGTH_STEP) * LENGTH_STEP


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.warning(message)


def static_unsupported(model: torch.nn.Module) -> str | None:
    """Why the static-cache step cannot run on ``model`` at all (None: it can)."""
    if weights_sharded(model):
        return "the weights are sharded (FSDP / ZeRO-3), and their forward gathers them"
    if not prepared_masks(model):
        return "it needs sdpa attention without sliding windows (a ready-made boolean key mask)"
    return None


class WeightCopies:
    """The ``dtype`` copy of every floating ``nn.Linear`` weight and bias of ``model`` whose dtype differs (a
    parameter shared by several layers is copied once). :meth:`refresh` casts the live parameters into them,
    in place (the addresses a captured graph reads stay fixed); inside :meth:`swapped` the layers hold the
    copies instead of their parameters."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.key = (dtype, _weights_memory(model))  # copies of these parameters, at these addresses
        copies: dict[int, torch.nn.Parameter] = {}
        self.slots: list[tuple[torch.nn.Module, str, torch.nn.Parameter, torch.nn.Parameter]] = []
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            for name in ("weight", "bias"):
                param = module._parameters.get(name)
                if param is None or not param.is_floating_point() or param.dtype == dtype:
                    continue
                if id(param) not in copies:
                    copies[id(param)] = torch.nn.Parameter(
                        torch.empty_like(param, dtype=dtype), requires_grad=False
                    )
                self.slots.append((module, name, param, copies[id(param)]))
        self._sources = {id(copy): (src, copy) for _, _, src, copy in self.slots}

    def refresh(self) -> None:
        """Cast the live parameters into the copies (what autocast's cast of each one gives)."""
        with torch.no_grad():
            for src, copy in self._sources.values():
                copy.copy_(src)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The linear layers read the copies inside this context; their parameters are back afterwards."""
        try:
            for module, name, _, copy in self.slots:
                module._parameters[name] = copy
            yield
        finally:
            for module, name, src, _ in self.slots:
                module._parameters[name] = src


#: model -> its WeightCopies (one set shared by every row bucket's graph)
_COPIES: weakref.WeakKeyDictionary[torch.nn.Module, WeightCopies] = weakref.WeakKeyDictionary()


def weight_copies(model: torch.nn.Module, autocast: tuple[bool, torch.dtype | None]) -> WeightCopies | None:
    """The model's copies for the ``autocast`` state (built, or rebuilt when the weights moved), refreshed
    from the live weights; None without autocast, or when no linear weight differs from its dtype."""
    enabled, dtype = autocast
    if not enabled or dtype is None:
        return None
    copies = _COPIES.get(model)
    if copies is None or copies.key != (dtype, _weights_memory(model)):
        _COPIES.pop(model, None)  # free the old copies before allocating new ones
        copies = WeightCopies(model, dtype)
        _COPIES[model] = copies
    if not copies.slots:
        return None
    copies.refresh()
    return copies


@dataclass
class _StepGraph:
    """The fixed buffers of one row bucket's decode step, and its CUDA graph (None: eager steps)."""

    model: Any  # weak reference to the model
    rows: int
    length: int
    cache: Any  # transformers.StaticCache, every layer initialised
    input_ids: Tensor  # (R, 1) long
    positions: Tensor  # (*lead, R, 1) long: Qwen-VL's text + 3D rope positions
    mask: Tensor  # (R, 1, 1, L) bool: the keys each row attends to
    cache_kw: str
    state: tuple  # what the capture depends on: dtype, positions' lead shape, autocast, weights' memory
    copies: WeightCopies | None = None  # the weight copies the step reads (kept alive with the graph)
    graph: torch.cuda.CUDAGraph | None = None
    logits: Tensor | None = None  # (R, V) float, written by each step
    replays: int = field(default=0)
    compiled: Any = None  # the torch.compile'd _forward (None: the step runs uncompiled)

    def _run(self) -> Tensor:
        return self._forward() if self.compiled is None else self.compiled()

    def _forward(self) -> Tensor:
        model = self.model()
        out = model(
            input_ids=self.input_ids,
            attention_mask=self.mask,
            position_ids=self.positions,
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        return out.logits[:, -1].float()

    def compile(self) -> None:
        """Compile the step (Inductor, whole graph, static shapes) and run it once, which compiles it; where
        that fails, log the reason once and keep the uncompiled step."""
        compiled = torch.compile(self._forward, fullgraph=True, dynamic=False)
        try:
            compiled()
        except Exception as err:  # no Triton / no C++ compiler, an op Inductor cannot lower, ...
            first_line = (str(err).strip().splitlines() or [""])[0]
            _log_once(
                "rollout.decoder=static_compiled: torch.compile of the decode step failed "
                f"({type(err).__name__}: {first_line}); the uncompiled step runs instead"
            )
            return
        self.compiled = compiled

    def capture(self) -> None:
        """Warm up on a side stream (cuBLAS handles, kernel choices), then record one step."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's calls can break the capture (not, say, a logger's thread)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.logits = self._run()
        self.graph = graph

    def step(self) -> Tensor:
        """One decode step over the buffers (a graph replay when captured); returns the logits (R, V)."""
        self.replays += 1
        if self.graph is None:
            self.logits = self._run()
        else:
            self.graph.replay()
        return self.logits


#: model -> {row bucket: _StepGraph}
_GRAPHS: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, _StepGraph]] = weakref.WeakKeyDictionary()
#: model -> why its step could not be captured (the lean loop runs for it from then on)
_UNCAPTURABLE: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def release_graphs(model: torch.nn.Module) -> None:
    """Drop the model's graphs, static caches and weight copies (their GPU memory returns to the caching
    allocator)."""
    _GRAPHS.pop(model, None)
    _UNCAPTURABLE.pop(model, None)
    _COPIES.pop(model, None)


def step_graphs(model: torch.nn.Module) -> dict[int, _StepGraph]:
    """The model's step graphs by row bucket (for tests and benchmarks)."""
    return _GRAPHS.get(model, {})


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    if not torch.is_autocast_enabled(device.type):
        return False, None
    return True, torch.get_autocast_dtype(device.type)


@contextlib.contextmanager
def _step_autocast(device: torch.device, state: tuple[bool, torch.dtype | None]) -> Iterator[None]:
    """The caller's autocast, without its cast cache: a captured step must cast the live weights each replay,
    never read a cached copy that the next optimiser step leaves stale."""
    enabled, dtype = state
    if not enabled:
        yield
        return
    with torch.autocast(device.type, dtype=dtype, cache_enabled=False):
        yield


class CaptureError(RuntimeError):
    """The decode step could not be recorded as a CUDA graph (the lean loop takes over for that model)."""


def _weights_memory(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in model.parameters())


def _reading(copies: WeightCopies | None) -> contextlib.AbstractContextManager:
    return copies.swapped() if copies is not None else contextlib.nullcontext()


def _new_step_graph(
    model: torch.nn.Module,
    rows: int,
    length: int,
    like: tuple[Tensor, Tensor],
    positions: Tensor,
    state: tuple,
    pad_id: int,
    copies: WeightCopies | None,
) -> _StepGraph:
    """Buffers + a static cache of ``rows x length`` slots, laid out like the prefill's keys and values
    ``like`` (under autocast the two can differ in dtype: rope promotes the keys, not the values)."""
    from transformers import StaticCache

    cache = StaticCache(config=hf_model(model).config, max_cache_len=length)
    keys, values = (x.new_zeros(rows, x.shape[1], 1, x.shape[-1]) for x in like)
    for layer in cache.layers:
        layer.lazy_initialization(keys, values)
        if layer.values.dtype != values.dtype:  # transformers 5.17 gives both the keys' dtype
            layer.values = torch.zeros_like(layer.values, dtype=values.dtype)
    device = keys.device
    lead = tuple(positions.shape[:-2])
    return _StepGraph(
        model=weakref.ref(model),
        rows=rows,
        length=length,
        cache=cache,
        input_ids=torch.full((rows, 1), pad_id, dtype=torch.long, device=device),
        positions=torch.zeros((*lead, rows, 1), dtype=positions.dtype, device=device),
        mask=torch.zeros((rows, 1, 1, length), dtype=torch.bool, device=device),
        cache_kw=cache_kwarg(model),
        state=state,
        copies=copies,
    )


def _step_graph(
    model: torch.nn.Module,
    n: int,
    needed: int,
    like: tuple[Tensor, Tensor],
    positions: Tensor,
    capture: bool,
    autocast: tuple,
    pad_id: int,
    copies: WeightCopies | None = None,
    compile_step: bool = False,
) -> _StepGraph:
    """The model's step graph for ``n`` rows and ``needed`` positions: reused, or built (compiled when
    ``compile_step``, and captured, reading ``copies`` of the linear weights when given)."""
    rows = row_bucket(n)
    state = (
        tuple(x.dtype for x in like),
        tuple(positions.shape[:-2]),
        autocast,
        capture,
        model.training,
        _weights_memory(model),
        copies is not None,
        compile_step,
    )
    graphs = _GRAPHS.setdefault(model, {})
    old = graphs.get(rows)
    if old is not None and old.length >= needed and old.state == state:
        return old
    length = max(length_bucket(needed), old.length if old is not None else 0)
    del old
    graphs.pop(rows, None)  # free the old static cache and graph pool before allocating the new ones
    sg = _new_step_graph(model, rows, length, like, positions, state, pad_id, copies)
    with _step_autocast(like[0].device, autocast), _reading(copies):
        if compile_step:
            sg.compile()
        if capture:
            try:
                sg.capture()
            except Exception as err:  # a host sync, data-dependent shapes, ... inside the model's forward
                raise CaptureError(f"{type(err).__name__}: {err}") from err
    graphs[rows] = sg
    return sg


@torch.no_grad()
def static_generate(
    model: torch.nn.Module,
    inputs: dict[str, Tensor],
    cfg: GenerationConfig,
    eos_ids: int | Sequence[int],
    pad_id: int,
    suppress_ids: list[int],
    num_return_sequences: int = 1,
    *,
    capture: bool | None = None,
    compile_step: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample responses; the contract of :func:`papo.rollout.lean_decode.lean_generate`.

    ``capture``: record the step as a CUDA graph (None: when the inputs are on a CUDA device).
    ``compile_step``: compile the step with ``torch.compile`` first (``rollout.decoder=static_compiled``).
    Falls back to :func:`~papo.rollout.lean_decode.lean_generate` where the static step cannot run (logged
    once).
    """
    args = (model, inputs, cfg, eos_ids, pad_id, suppress_ids, num_return_sequences)
    reason = static_unsupported(model)
    if reason is not None:
        _log_once(f"rollout.decoder=static: {reason}; decoding with the lean loop instead")
        return lean_generate(*args)
    device = inputs["input_ids"].device
    capture = device.type == "cuda" if capture is None else capture
    if capture and model in _UNCAPTURABLE:
        return lean_generate(*args)
    attn = inputs["attention_mask"]
    dynamic, logits, positions = prefill(model, inputs)
    G = num_return_sequences
    (B, P), T = attn.shape, cfg.max_new_tokens
    n = B * G
    autocast = _autocast_state(device)
    copies = weight_copies(model, autocast)  # the live weights cast once per call, not once per replay
    like = dynamic.layers[0].keys, dynamic.layers[0].values  # (B, kv_heads, P, head_dim) each
    try:
        sg = _step_graph(model, n, P + T, like, positions, capture, autocast, pad_id, copies, compile_step)
    except CaptureError as err:  # a forward that cannot be captured: the lean loop from now on
        _UNCAPTURABLE[model] = str(err)
        _log_once(
            f"rollout.decoder=static: the decode step of {type(hf_model(model)).__name__} could not be "
            f"captured as a CUDA graph ({_UNCAPTURABLE[model]}); decoding with the lean loop instead"
        )
        return lean_generate(*args)
    # the prompts' keys and values, each prompt's repeated for its G rows, into the static slots [0, P)
    rows = torch.arange(B, device=device).repeat_interleave(G)  # (n,) prompt of each row
    for static_layer, dynamic_layer in zip(sg.cache.layers, dynamic.layers, strict=True):
        static_layer.keys[:n, :, :P] = dynamic_layer.keys[rows]
        static_layer.values[:n, :, :P] = dynamic_layer.values[rows]
        static_layer.cumulative_length.fill_(P)  # the next token goes to slot P
    del dynamic
    sg.mask.zero_()
    sg.mask[:n, 0, 0, :P] = attn[rows].bool()
    sg.mask[n:, 0, 0, 0] = True  # spare rows attend to one slot (no empty softmax)
    sg.positions.zero_()
    sg.positions[..., :n, :] = positions[..., -1:].index_select(positions.ndim - 2, rows)
    sg.input_ids.fill_(pad_id)

    rules = StepRules.build(cfg, eos_ids, pad_id, suppress_ids, device)
    logits = logits[rows]  # (n, V)
    tokens = torch.full((n, T), pad_id, dtype=torch.long, device=device)
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    width = T
    with _step_autocast(device, autocast), _reading(copies):
        for t in range(T):
            tokens[:, t] = next_tokens(logits, t, unfinished, rules)
            if t == T - 1:
                break
            if (t + 1) % CHECK_EVERY == 0 and not bool(unfinished.any()):
                width = t + 1
                break
            sg.input_ids[:n, 0] = tokens[:, t]
            sg.positions += 1
            sg.mask[:, 0, 0, P + t] = True  # this step's token goes to slot P + t
            logits = sg.step()[:n]
    ids, mask = finish_responses(tokens[:, :width], eos_ids, pad_id)
    keep = max(int(mask.sum(1).max()), 1)  # the lean loop stops at the step where the last row ended
    return ids[:, :keep], mask[:, :keep]
