"""Multi-device helpers: everything here defers to Lightning's strategies and ``torch.distributed``.

Scaling is Lightning's job (``configs/trainer/{ddp,ddp_sim,fsdp,deepspeed_zero2,deepspeed_zero3}.yaml``); the
reductions over ranks go through the strategy's own API (``trainer.strategy.reduce``,
``reduce_boolean_decision``: :class:`papo.models.papo_module.PapoModule`). This module holds the few places
where the RL update must know which strategy runs it, told apart by ``isinstance`` on Lightning's strategy
classes:

- :func:`clip_grad_norm`: the global grad norm under DDP (plain, gradients are already all-reduced), FSDP2
  (the norm of sharded DTensor gradients) and DeepSpeed (the engine clips inside ``step``: configure it in
  the strategy; :func:`engine_grad_norm` reads its norm back after the step).
- :func:`is_sharded`: HF ``generate`` on sharded weights (FSDP, ZeRO-3) must run with ``synced_gpus``.
- :func:`fused_optimizer_ok`: the fused AdamW kernel for CPU / CUDA parameters, not under sharded strategies.
- :func:`fully_shard_model`: FSDP2 sharding of the policy / reference (trainer=fsdp, Lightning's
  ``ModelParallelStrategy``; FSDP1's ``FSDPStrategy`` cannot be used: it finalises gradients when the wrapped
  LightningModule's forward returns, but manual optimisation steps inside ``training_step``).
- :func:`generation_context`: FSDP2 shards gathered once per rollout (HF generate).
- :func:`check_strategy_available`: a clear error when a strategy's package is missing (DeepSpeed).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

try:  # Lightning's DeepSpeed strategy class; absent from some builds without deepspeed
    from lightning.pytorch.strategies import DeepSpeedStrategy
except ImportError:  # pragma: no cover - depends on the Lightning build
    DeepSpeedStrategy = None  # type: ignore[assignment,misc]

__all__ = [
    "SHARDED_STRATEGIES",
    "check_strategy_available",
    "clip_grad_norm",
    "engine_grad_norm",
    "fully_shard_model",
    "fused_optimizer_ok",
    "generation_context",
    "is_sharded",
]

#: strategies whose ranks hold shards of the weights (every forward gathers them collectively)
SHARDED_STRATEGIES: tuple[type, ...] = tuple(
    s for s in (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy) if s is not None
)


def _strategy(trainer: Any) -> Any:
    return getattr(trainer, "strategy", None) if trainer is not None else None


def _is_deepspeed(strategy: Any) -> bool:
    return DeepSpeedStrategy is not None and isinstance(strategy, DeepSpeedStrategy)


def is_sharded(trainer: Any) -> bool:
    """Whether the policy's weights are sharded over several ranks (FSDP / DeepSpeed): every forward then
    gathers weights collectively, so generation must keep all ranks stepping (``synced_gpus``)."""
    return isinstance(_strategy(trainer), SHARDED_STRATEGIES) and trainer.world_size > 1


def fused_optimizer_ok(trainer: Any, params: Iterable[torch.nn.Parameter]) -> bool:
    """The fused AdamW kernel (one kernel for all tensors; HF Trainer's default) is used for CPU / CUDA
    parameters; sharded strategies (FSDP, DeepSpeed) keep torch's default implementation."""
    return not isinstance(_strategy(trainer), SHARDED_STRATEGIES) and all(
        p.device.type in ("cpu", "cuda") for p in params
    )


def clip_grad_norm(
    trainer: Any, params: Iterable[torch.nn.Parameter], max_norm: float
) -> torch.Tensor | None:
    """Clip the global gradient norm to ``max_norm`` and return the norm before clipping.

    Under DeepSpeed the engine clips inside ``optimizer.step()`` (``gradient_clipping`` in the strategy
    config; its gradients live in the engine's partitioned buffers, not in ``p.grad``): this clips nothing and
    returns None; read the engine's norm after the step with :func:`engine_grad_norm`.
    """
    strategy = _strategy(trainer)
    if isinstance(strategy, ModelParallelStrategy):
        # gradients are sharded DTensors: the norm over all shards, then clip (TorchTitan's way)
        params = [p for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(total, "full_tensor"):
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total
    if _is_deepspeed(strategy):
        return None
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm)


def engine_grad_norm(trainer: Any) -> float | None:
    """The global gradient norm the DeepSpeed engine computed in its last ``step`` (None when unknown)."""
    engine = getattr(_strategy(trainer), "model", None)
    norm = getattr(engine, "get_global_grad_norm", lambda: None)()
    return None if norm is None else float(norm)


@contextlib.contextmanager
def generation_context(model: torch.nn.Module) -> Iterator[None]:
    """FSDP2: every shard of ``model`` gathered for the duration of a rollout (a no-op otherwise).

    HF ``generate`` on Qwen-VL encodes images through submodules called outside the model's ``forward``, where
    FSDP2's hooks would not gather the root's parameters; and re-gathering each block at every decoding step
    is slow. So all units are unsharded once (full bf16 weights on each GPU for the rollout) and resharded after.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    root = units[0]  # model.modules() lists the outermost unit first
    # HF generate runs the vision tower outside the root's forward: without this, the first block to run would
    # lazily initialise as an FSDP root of its own (FSDP2 then refuses the real root's forward)
    state = getattr(root, "_get_fsdp_state", lambda: None)()
    if state is not None and hasattr(state, "_lazy_init"):
        state._lazy_init()
    toggle = hasattr(root, "set_reshard_after_forward")
    if toggle:
        root.set_reshard_after_forward(False, recurse=True)  # keep them gathered between decoding steps
    for m in units:
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
        if toggle:
            for m in units[1:]:  # back to resharding blocks after forward (the root never reshards)
                m.set_reshard_after_forward(True, recurse=False)


#: transformer blocks that become their own FSDP2 unit (text decoder layers + vision blocks, both families)
SHARD_LAYER_CLASSES = (
    "Qwen2_5_VLDecoderLayer",
    "Qwen2_5_VLVisionBlock",
    "Qwen3VLTextDecoderLayer",
    "Qwen3VLVisionBlock",
)


def fully_shard_model(model: torch.nn.Module, mesh: Any, bf16: bool = True) -> torch.nn.Module:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per transformer block, then the whole model.

    ``bf16``: all-gather and compute in bfloat16 with float32 master weights and gradient reductions (the
    published runs' mixed precision). Called from ``PapoModule.configure_model`` under trainer=fsdp
    (Lightning's ``ModelParallelStrategy``, which hands the module its device mesh).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"mesh": mesh} if mp is None else {"mesh": mesh, "mp_policy": mp}
    n = 0
    for module in model.modules():
        if type(module).__name__ in SHARD_LAYER_CLASSES:
            fully_shard(module, **kwargs)
            n += 1
    if n == 0:
        raise ValueError(f"no block of {SHARD_LAYER_CLASSES} in {type(model).__name__}: cannot shard it")
    fully_shard(model, **kwargs)
    return model


def _strategy_class(strategy: Any) -> type | None:
    """The class a ``trainer.strategy`` config names: a ``_target_`` node, or a Lightning registry name."""
    from hydra.utils import get_class
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(strategy, str):
        return StrategyRegistry[strategy]["strategy"] if strategy in StrategyRegistry else None
    target = strategy.get("_target_") if hasattr(strategy, "get") else None
    if not target:
        return None
    try:
        return get_class(str(target))
    except Exception as err:
        raise ImportError(f"trainer.strategy._target_={target!r} cannot be imported: {err}") from None


def check_strategy_available(strategy: Any) -> None:
    """Raise ``ImportError`` with an install hint when ``strategy`` needs a package that is missing."""
    cls = _strategy_class(strategy) if strategy is not None else None
    deepspeed = DeepSpeedStrategy is not None and isinstance(cls, type) and issubclass(cls, DeepSpeedStrategy)
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(
            "trainer strategy DeepSpeed was selected but the deepspeed package is not installed: "
            "pip install 'papo[deepspeed]' (needs a CUDA toolchain), or choose trainer=ddp / trainer=fsdp"
        )
