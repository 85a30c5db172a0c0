"""Export a trained policy as a Hugging Face model folder (``save_pretrained``), loadable with plain transformers.

What it implements (behind ``src/export.py``; docs/export.md):

* :func:`find_checkpoint` -- the checkpoint ``ckpt_path`` names: a Lightning ``.ckpt`` file, a sharded
  checkpoint directory (``trainer=fsdp``: torch.distributed.checkpoint; ``trainer=deepspeed_*``: DeepSpeed ZeRO),
  or a run directory (its newest checkpoint).
* :func:`load_policy_weights` -- the full ``policy.*`` weights of a checkpoint, shards consolidated with the
  tools of the strategy that wrote them: torch.distributed.checkpoint's ``_EmptyStateDictLoadPlanner`` (what
  ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` uses, here restricted to the model weights,
  one process) and DeepSpeed's ``zero_to_fp32``. The frozen reference model (``reference.*``) is never read.
* :func:`export_policy` -- the policy rebuilt from the model config it was trained with, its weights loaded
  (strict), LoRA merged into the weights (``lora=merge``) or saved as a PEFT adapter (``lora=adapter``, with the
  frozen base it was trained on in ``base_model/``), written with ``save_pretrained``: safetensors weights,
  config, processor (with its pixel bounds), tokenizer with the chat template, and a generation config listing
  every end token, the suppressed ids of the rollout (image placeholder, padded vocabulary rows) and
  ``repetition_penalty=1.0``, so that plain ``model.generate`` decodes as the rollout does.

The output folder is written next to its final place and moved there when complete; an existing folder is
refused unless ``overwrite``. Differences from EasyR1 / verl: their ``model_merger`` scripts consolidate FSDP
shards of their own format into a HF folder; here the shards are Lightning's (DCP / DeepSpeed).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from papo.models.loading import WeightsMismatch, load_weights_into
from papo.utils.checkpointing import CheckpointNotFoundError, check_checkpoint_file

log = logging.getLogger(__name__)

__all__ = [
    "ExportError",
    "checkpoint_kind",
    "export_policy",
    "find_checkpoint",
    "load_policy_weights",
    "run_model_config",
]

POLICY_PREFIX = "policy."
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index file
DEEPSPEED_LATEST = "latest"  # DeepSpeed's file naming the tag folder
LORA_MODES = ("merge", "adapter")


class ExportError(ValueError):
    """An export that cannot run as asked (one-line message naming the key)."""


# ------------------------------------------------------------------------------------------- checkpoints
def checkpoint_kind(path: Path) -> str | None:
    """``"lightning"`` (one file), ``"dcp"`` (sharded, torch.distributed.checkpoint), ``"deepspeed"`` or None."""
    if path.is_file():
        return "lightning"
    if not path.is_dir():
        return None
    if (path / DCP_METADATA).is_file():
        return "dcp"
    if (path / DEEPSPEED_LATEST).is_file() or any(path.glob("*/mp_rank_*_model_states.pt")):
        return "deepspeed"
    return None


def _newest(directory: Path) -> Path | None:
    found = [p for p in directory.glob("*.ckpt") if checkpoint_kind(p) is not None]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")))


def find_checkpoint(ckpt_path: str | Path | None) -> tuple[Path, str]:
    """``(checkpoint, kind)`` of a ``.ckpt`` file, a sharded ``.ckpt`` directory or a run directory (its newest
    checkpoint in ``checkpoints/``). Raises :class:`ExportError` naming what was searched."""
    if ckpt_path is None or str(ckpt_path).strip() in ("", "???", "null", "None"):
        raise ExportError("ckpt_path is required: a .ckpt file, a sharded .ckpt directory or a run directory")
    path = Path(str(ckpt_path)).expanduser()
    if not path.exists():
        raise ExportError(f"ckpt_path={ckpt_path}: no such file or directory")
    kind = checkpoint_kind(path)
    if kind is None:
        found = _newest(path / "checkpoints") or _newest(path)
        if found is None:
            raise ExportError(
                f"ckpt_path={ckpt_path}: not a checkpoint, and no *.ckpt in {path / 'checkpoints'} or {path}"
            )
        path, kind = found, str(checkpoint_kind(found))
    try:  # a truncated, non-torch or foreign file: one line now, not a traceback from torch.load later
        check_checkpoint_file(path)
    except CheckpointNotFoundError as err:
        raise ExportError(str(err)) from None
    return path, kind


def _policy_only(state: Mapping[str, Any], source: Path) -> dict[str, torch.Tensor]:
    weights = {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    if not weights:
        raise ExportError(f"{source} has no 'policy.*' weights (is it a checkpoint of src/train.py?)")
    return weights


def _load_dcp(path: Path) -> dict[str, Any]:
    """The ``state_dict`` entry of a torch.distributed.checkpoint directory, full tensors, in this process."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # what dcp_to_torch_save and Lightning's consolidation run (dcp.load keeps only keys already present)
    out: dict[str, Any] = {}
    _load_state_dict(
        out,
        storage_reader=FileSystemReader(str(path)),
        planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),  # the weights, not the optimizer states
        no_dist=True,
    )
    return out["state_dict"]


def _load_deepspeed(path: Path) -> dict[str, Any]:
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ExportError(
            f"{path} is a DeepSpeed checkpoint: consolidating it needs deepspeed (pip install 'papo[deepspeed]')"
        ) from err
    state = get_fp32_state_dict_from_zero_checkpoint(str(path))
    return {k.removeprefix("_forward_module."): v for k, v in state.items()}


def load_policy_weights(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The policy's full weights (keys without ``policy.``) of a checkpoint of ``kind`` (:func:`checkpoint_kind`)."""
    if kind == "lightning":
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    elif kind == "dcp":
        state = _load_dcp(path)
    elif kind == "deepspeed":
        state = _load_deepspeed(path)
    else:  # pragma: no cover - find_checkpoint returns one of the three
        raise ExportError(f"{path}: unknown checkpoint kind {kind!r}")
    return _policy_only(state, path)


def run_model_config(ckpt: Path) -> dict[str, Any] | None:
    """The ``model`` config of the run a checkpoint belongs to (``<run>/.hydra/config.yaml``), or None."""
    from omegaconf import OmegaConf

    run = ckpt.resolve().parent
    run = run.parent if run.name == "checkpoints" else run
    saved = run / ".hydra" / "config.yaml"
    if not saved.is_file():
        return None
    try:
        model = OmegaConf.to_container(OmegaConf.load(saved).model, resolve=True)
    except Exception as err:  # an interpolation this process cannot resolve: the `model` group instead
        log.warning("cannot read the model config of %s (%s): using the model group", saved, err)
        return None
    log.info("model config from the training run: %s", saved)
    return model  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ export
def _prepare_out(out: str | Path | None, overwrite: bool) -> Path:
    if out is None or str(out).strip() in ("", "???", "null", "None"):
        raise ExportError("out is required: the folder to write the model to")
    path = Path(str(out)).expanduser().resolve()
    if path.exists() and (path.is_file() or any(path.iterdir())) and not overwrite:
        raise ExportError(f"out={out} exists; choose another folder or pass overwrite=true to replace it")
    try:  # the folder is staged next to ``out``: find out now, before loading anything, that it can be written
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent).cleanup()
    except OSError as err:
        raise ExportError(f"out={out}: cannot write in {path.parent} ({err.strerror or err})") from None
    return path


def _generation_config(model: torch.nn.Module, processor: Any) -> None:
    """Every end token, pad, the rollout's suppressed ids and no repetition penalty in the saved config."""
    from papo.models.loading import end_token_ids, generation_suppress_token_ids, output_vocab_size

    gen = model.generation_config
    gen.eos_token_id = end_token_ids(gen, processor)
    if gen.pad_token_id is None:
        gen.pad_token_id = processor.tokenizer.pad_token_id
    gen.suppress_tokens = generation_suppress_token_ids(processor, output_vocab_size(model)) or None
    gen.repetition_penalty = 1.0  # the rollout's (papo.rollout.hf_generate), not a shipped 1.05


def _load_into(policy: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    try:
        load_weights_into(policy, weights)
    except WeightsMismatch as err:  # another model size / architecture than the training run's
        raise ExportError(
            f"{source} does not fit the model config ({err}); pass the training run's model overrides "
            "(model=..., +model.lora.rank=...) or model_from_run=true"
        ) from None


def export_policy(
    ckpt_path: str | Path,
    out: str | Path,
    model_cfg: Mapping[str, Any],
    lora: str = "merge",
    overwrite: bool = False,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write the policy of ``ckpt_path`` to ``out`` as a Hugging Face folder; returns ``out``.

    Args:
        ckpt_path: a ``.ckpt`` file, a sharded checkpoint directory or a run directory (:func:`find_checkpoint`).
        out: the folder to write (refused when it exists and is not empty, unless ``overwrite``).
        model_cfg: the ``model`` config the policy was trained with (architecture, processor, LoRA).
        lora: ``merge`` (adapters folded into the weights: a plain model) or ``adapter`` (PEFT adapter files,
            the frozen base in ``out/base_model``); ignored without LoRA.
        dtype: the saved weights' dtype (``float32`` | ``bfloat16`` | ``float16``); None: the model config's.
        max_shard_size: safetensors shard size of ``save_pretrained``.
    """
    from papo.models.loading import is_lora, load_policy, resolve_dtype
    from papo.pipeline import resolve_model_dir

    if lora not in LORA_MODES:
        raise ExportError(f"lora={lora!r} is not one of {list(LORA_MODES)}")
    try:  # before anything loads
        resolve_dtype(dtype or model_cfg.get("dtype") or "float32")
    except ValueError as err:
        raise ExportError(f"dtype: {err}") from None
    target = _prepare_out(out, overwrite)
    ckpt, kind = find_checkpoint(ckpt_path)
    log.info("exporting %s checkpoint %s", kind, ckpt)
    weights = load_policy_weights(ckpt, kind)
    # attention: load_policy's default (sdpa), whatever kernel training used (export runs on the CPU)
    keys = ("trust_remote_code", "min_pixels", "max_pixels", "lora")
    kwargs = {k: model_cfg[k] for k in keys if k in model_cfg and model_cfg[k] is not None}
    kwargs["dtype"] = "float32"  # loaded exactly, cast once below
    from omegaconf import OmegaConf

    base_dir = resolve_model_dir(OmegaConf.create(dict(model_cfg)))
    policy, processor = load_policy(base_dir, **kwargs)
    has_lora_weights = any(".lora_A." in k for k in weights)
    if has_lora_weights != is_lora(policy):
        raise ExportError(
            f"{ckpt} {'has' if has_lora_weights else 'has no'} LoRA adapters but model.lora.rank is "
            f"{'0' if has_lora_weights else '> 0'}: pass the training run's model overrides"
        )
    _load_into(policy, weights, ckpt)
    del weights
    save_dtype = resolve_dtype(dtype or model_cfg.get("dtype") or "float32")
    if save_dtype == "auto":
        save_dtype = torch.float32
    policy = policy.to(save_dtype)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if is_lora(policy) and lora == "adapter":
            base = policy.get_base_model()
            _save_hf(_unwrapped_base(policy), processor, staging / "base_model", max_shard_size)
            policy.peft_config["default"].base_model_name_or_path = str(target / "base_model")
            policy.save_pretrained(staging, safe_serialization=True)
            _generation_config(base, processor)
            base.generation_config.save_pretrained(staging)
            processor.save_pretrained(staging)
        else:
            model = policy.merge_and_unload() if is_lora(policy) else policy
            _save_hf(model, processor, staging, max_shard_size)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("exported the policy of %s to %s", ckpt, target)
    return target


def _unwrapped_base(policy: Any) -> torch.nn.Module:
    """The base model of a PEFT model with its LoRA layers' own base weights (adapters left out)."""
    import copy

    return copy.deepcopy(policy).unload()


def _save_hf(model: torch.nn.Module, processor: Any, folder: Path, max_shard_size: str) -> None:
    _generation_config(model, processor)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    processor.save_pretrained(folder)
