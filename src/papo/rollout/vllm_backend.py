"""vLLM rollouts (``rollout=vllm``): a colocated engine in each training process, weights synced after updates.

The engine is vLLM's offline ``LLM`` built from the policy's starting checkpoint, sharing the GPU with the
trainer (``gpu_memory_utilization`` caps its share; with ``sleep: true`` its KV cache is released between
rollouts). After every optimiser update the module marks the engine stale and, before the next generation,
:meth:`VLLMEngine.sync_weights` streams the CURRENT policy weights into vLLM's model with its
``load_weights`` (LoRA adapters are merged for the copy and unmerged after; FSDP2 shards are gathered tensor by
tensor), so
rollouts always come from the parameters being trained. Prompts go in as the chat-template text plus PIL
images, so vLLM applies the same HF processor (same pixel bounds) as the training forward; only response token
ids come back. The ids the HF path never samples (the image placeholder and the padded output rows) are
excluded with ``allowed_token_ids``, and every end token of the model's generation config stops a response.

Differences from EasyR1/verl (which also use vLLM): one engine per data-parallel rank (no tensor-parallel
rollout workers, no Ray), weights copied through ``load_weights`` (verl uses the same call); sampling
settings come from ``configs/rollout``. Requires the ``vllm`` extra (``pip install 'papo[vllm]'``) and a GPU;
not exercised by the CPU test suite.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from papo.models.loading import hf_model
from papo.rollout.hf_generate import GenerationConfig, as_id_list, response_mask_from_ids

log = logging.getLogger(__name__)

__all__ = ["VLLMEngine", "require_vllm"]


def require_vllm() -> None:
    """Raise ``ImportError`` with the install hint when vLLM is not importable."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "rollout=vllm needs vLLM, which is not installed: pip install 'papo[vllm]' (Linux + CUDA GPU). "
            "Or use the default Hugging Face generate backend: rollout=hf"
        )


def _hf_weights(policy: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` of the policy in the HF checkpoint layout vLLM loads (LoRA merged by the caller)."""
    for name, tensor in hf_model(policy).state_dict().items():
        if "lora_" in name:
            continue
        if hasattr(tensor, "full_tensor"):  # FSDP2 shard (DTensor): gather the full weight
            tensor = tensor.full_tensor()
        yield name.replace(".base_layer.", "."), tensor


@contextlib.contextmanager
def _merged(policy: torch.nn.Module) -> Iterator[None]:
    """LoRA adapters merged into the base weights for the duration (a no-op without adapters)."""
    if hasattr(policy, "merge_adapter") and hasattr(policy, "peft_config"):
        policy.merge_adapter()
        try:
            yield
        finally:
            policy.unmerge_adapter()
    else:
        yield


class VLLMEngine:
    """A colocated vLLM engine: :meth:`generate` for rollouts, :meth:`sync_weights` after each update.

    Args:
        model_path: the policy's starting checkpoint (hub id or directory; same as ``load_policy``'s).
        dtype: engine dtype (``bfloat16`` on GPUs).
        gpu_memory_utilization: fraction of the GPU vLLM may take (weights + KV cache); the trainer uses the rest.
        max_model_len: prompt + response tokens (``rollout.max_prompt_length + rollout.max_new_tokens``).
        tensor_parallel_size: GPUs per engine (1: one engine per data-parallel rank).
        enforce_eager: skip CUDA-graph capture (faster start, slower decode).
        sleep: release the KV cache between rollouts (``LLM.sleep`` / ``wake_up``) to leave memory to training.
        seed: sampling seed (offset by the rank so ranks draw different samples).
        min_pixels / max_pixels: the image processor's bounds, as in ``configs/model``.
        max_images_per_prompt: ``limit_mm_per_prompt`` for images.
        engine_kwargs: any other ``vllm.LLM`` keyword (e.g. ``distributed_executor_backend``).
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.35,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        sleep: bool = True,
        seed: int = 0,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_images_per_prompt: int = 4,
        trust_remote_code: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        require_vllm()
        # in-process engine core, so that load_weights can reach the model (vLLM V1 defaults to a subprocess)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        mm_kwargs = {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=float(gpu_memory_utilization),
            tensor_parallel_size=int(tensor_parallel_size),
            enforce_eager=bool(enforce_eager),
            enable_sleep_mode=bool(sleep),
            seed=int(seed),
            trust_remote_code=bool(trust_remote_code),
            limit_mm_per_prompt={"image": int(max_images_per_prompt)},
        )
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        if mm_kwargs:
            kwargs["mm_processor_kwargs"] = mm_kwargs
        kwargs.update(engine_kwargs or {})
        log.info("starting colocated vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = LLM(**kwargs)
        self.sleep = bool(sleep)
        self._asleep = False
        self._vocab_size: int | None = None
        if self.sleep:
            self._sleep()

    # ------------------------------------------------------------------ memory
    def _sleep(self) -> None:
        if self.sleep and not self._asleep:
            # level 1: vLLM offloads the weights to CPU memory and discards the KV cache (wake_up reloads them)
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------ weights
    def _model(self) -> torch.nn.Module:
        engine = self.llm.llm_engine
        for path in (
            ("model_executor", "driver_worker", "worker", "model_runner", "model"),
            ("model_executor", "driver_worker", "model_runner", "model"),
            (
                "engine_core",
                "engine_core",
                "model_executor",
                "driver_worker",
                "worker",
                "model_runner",
                "model",
            ),
        ):
            obj: Any = engine
            try:
                for attr in path:
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                continue
        raise RuntimeError(
            "cannot reach vLLM's model to load weights (in-process engine needed: set "
            "VLLM_ENABLE_V1_MULTIPROCESSING=0, as the rollout=vllm config does)"
        )

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> int:
        """Copy the policy's current weights into the engine. Returns the number of tensors loaded."""
        self._wake()
        model = self._model()
        with _merged(policy):
            loaded = model.load_weights(weights=_hf_weights(policy))
        with contextlib.suppress(Exception):
            self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights
        self._sleep()
        return len(loaded) if loaded is not None else -1

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        texts: list[str],
        images: list[list[Any]],
        cfg: GenerationConfig,
        eos_ids: int | list[int],
        pad_id: int,
        suppress_ids: list[int] | None = None,
        vocab_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``cfg.num_samples`` responses per prompt, rows grouped per prompt (prompt 0's G rows first).

        ``texts`` are chat-template prompts (one per prompt), ``images`` the PIL images of each. Returns
        response_ids (B*G, T) right-padded with ``pad_id`` and response_mask (B*G, T) (1 up to and including the
        first of the end tokens ``eos_ids``), as :func:`papo.rollout.hf_generate.hf_generate` does.
        """
        from vllm import SamplingParams

        params: dict[str, Any] = dict(
            n=int(cfg.num_samples),
            max_tokens=int(cfg.max_new_tokens),
            min_tokens=min(int(cfg.min_new_tokens), int(cfg.max_new_tokens)),
            stop_token_ids=as_id_list(eos_ids),
            skip_special_tokens=False,
            detokenize=False,
        )
        if cfg.temperature > 0:
            params.update(
                temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=int(cfg.top_k) or -1
            )
        else:
            params.update(temperature=0.0)
        if suppress_ids:
            vocab = int(vocab_size or self._engine_vocab_size())
            banned = set(int(i) for i in suppress_ids)
            params["allowed_token_ids"] = [i for i in range(vocab) if i not in banned]
        prompts = []
        for text, imgs in zip(texts, images, strict=True):
            item: dict[str, Any] = {"prompt": text}
            if imgs:
                item["multi_modal_data"] = {"image": list(imgs)}
            prompts.append(item)
        self._wake()
        try:
            outputs = self.llm.generate(prompts, SamplingParams(**params), use_tqdm=False)
        finally:
            self._sleep()
        rows = [list(o.token_ids) or as_id_list(eos_ids)[:1] for out in outputs for o in out.outputs]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask = response_mask_from_ids(ids, eos_ids)
        lengths = torch.tensor([len(r) for r in rows])
        mask = mask * (torch.arange(T)[None, :] < lengths[:, None]).float()  # padding is not a response token
        return ids, mask

    def _engine_vocab_size(self) -> int:
        if self._vocab_size is None:
            self._vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        return self._vocab_size
