"""Offline evaluation behind ``src/eval.py``: avg@k and greedy accuracy with the real and the masked image.

Protocols (each one a generation setting): ``greedy`` (T = 0, one response) and ``avg@k`` (k responses
at temperature T; published protocol k = 8, T = 1.0). For each protocol and each view (real image,
masked image with the split's fixed seeded masks) the :class:`~papo.evaluation.metrics.ValidationMetrics`
keys are computed (``detailed=True``): accuracy, reward, format rate, mean response length, per task
type and per vision-dependency level, the vision-reliance gaps, and the held-out perception KL
(``kl_prcp``, on the real-image responses). Results go to ``eval_<split>.json`` and ``eval_<split>.md``.

The policy is either a Lightning checkpoint of an RL run (``ckpt_path``: its ``policy.*`` weights are
loaded into the architecture and processor of the model that :func:`papo.pipeline.resolve_model_dir`
resolves, i.e. the same ``model`` config as training) or a Hugging Face model directory / hub id
(``model.path``); with neither, the policy an RL run would start from (the embedded model after the
cached warm start): the "before RL" baseline.

Differences from the paper's evaluation: the paper evaluates on eight public benchmarks with vLLM; here
any split of any dataset the datamodule reads, with HF ``generate``.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.perception import attach_masked_view, heldout_perception_kl
from papo.evaluation.samples import collect_samples, write_samples
from papo.models.loading import (
    end_token_ids,
    generation_suppress_token_ids,
    load_policy,
    output_vocab_size,
    padded_vocab_ids,
)
from papo.rewards import build_reward_fn
from papo.rollout.collect import Generator
from papo.rollout.hf_generate import GenerationConfig
from papo.utils.wrappers import task_wrapper

log = logging.getLogger(__name__)


@dataclass
class Protocol:
    """One generation setting of the evaluation."""

    name: str  # "greedy" or "avg@k"
    gen: GenerationConfig


def protocols_from_cfg(ev: DictConfig | dict, max_new_tokens: int) -> list[Protocol]:
    """``greedy`` (if ``ev.greedy``) and ``avg@<samples>`` at ``ev.temperature`` (if ``ev.samples`` > 0)."""
    out = []
    if ev.get("greedy", True):
        out.append(Protocol("greedy", GenerationConfig(max_new_tokens, 0.0, 1.0, 0, 1)))
    k = int(ev.get("samples", 0) or 0)
    if k > 0:
        if float(ev["temperature"]) <= 0:
            raise ValueError(f"eval.temperature={ev['temperature']} must be > 0 for avg@{k} (use greedy)")
        gen = GenerationConfig(
            max_new_tokens, float(ev["temperature"]), float(ev.get("top_p", 1.0)), int(ev.get("top_k", 0)), k
        )
        out.append(Protocol(f"avg@{k}", gen))
    if not out:
        raise ValueError("nothing to evaluate: set eval.greedy=true and/or eval.samples > 0")
    return out


def _take(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` prompts of a batch (every list field sliced)."""
    return {k: (v[:n] if isinstance(v, list) else v) for k, v in batch.items()}


class Evaluator:
    """Generates and scores a split under several protocols and both image views."""

    def __init__(
        self,
        policy: torch.nn.Module,
        processor: Any,
        reward_fn: Any,
        *,
        max_prompt_length: int = 4096,
        generation_batch_size: int = 512,
        decoder: str = "lean",
        on_error: str = "raise",
        device: torch.device | str = "cpu",
        kl_prcp: bool = True,
        kl_temperature: float = 1.0,
        micro_batch_size: int = 64,
        num_samples_shown: int = 8,
    ) -> None:
        self.policy = policy.to(device).eval()
        self.processor = processor
        self.reward_fn = reward_fn
        self.generator = Generator(
            processor,
            generation_suppress_token_ids(processor, vocab_size=output_vocab_size(policy)),
            max_prompt_length,
            generation_batch_size,
            decoder,
            eos_ids=end_token_ids(policy.generation_config, processor),
        )
        # log-probs are scored over every tokenizer id; only the untrained padded rows are excluded
        padded = padded_vocab_ids(processor, output_vocab_size(policy))
        self.suppress_ids = torch.tensor(padded, dtype=torch.long)
        self.on_error, self.device = on_error, torch.device(device)
        self.kl_prcp, self.kl_temperature = kl_prcp, kl_temperature
        self.micro_batch_size, self.num_samples_shown = micro_batch_size, num_samples_shown

    @torch.no_grad()
    def run(
        self, loader: Any, protocols: list[Protocol], masked: bool = True, limit: int | None = None
    ) -> dict[str, Any]:
        """Evaluate up to ``limit`` prompts of ``loader``. Returns metrics, counts and samples."""
        metrics = {p.name: ValidationMetrics(detailed=True) for p in protocols}
        counts: dict[str, dict[str, int]] = {"task": {}, "vd": {}}
        samples: list[dict[str, Any]] = []
        n_prompts, n_errors, t0 = 0, 0, time.time()
        for batch_idx, batch in enumerate(loader):
            if limit is not None:
                if n_prompts >= limit:
                    break
                batch = _take(batch, limit - n_prompts)
            n_prompts += len(batch["prompt"])
            for field, tag in (("task_type", "task"), ("vision_dependency", "vd")):
                for x in batch[field]:
                    counts[tag][x] = counts[tag].get(x, 0) + 1
            views = [False, True] if masked and batch.get("images_masked") is not None else [False]
            for p_idx, proto in enumerate(protocols):
                for use_masked in views:
                    exp, err = self.generator.rollout(
                        self.policy,
                        batch,
                        proto.gen,
                        self.reward_fn,
                        use_masked_images=use_masked,
                        on_error=self.on_error,
                        device=self.device,
                    )
                    n_errors += err
                    metrics[proto.name].update(exp, masked=use_masked)
                    if not use_masked and self.kl_prcp and attach_masked_view(self.processor, batch, exp):
                        kl_sum, n_tok = heldout_perception_kl(
                            self.policy,
                            exp,
                            suppress_ids=self.suppress_ids,
                            temperature=self.kl_temperature,
                            micro_batch_size=self.micro_batch_size,
                            device=self.device,
                        )
                        metrics[proto.name].update_kl(kl_sum, n_tok, exp.vision_dependency)
                    if batch_idx == 0 and p_idx == 0 and self.num_samples_shown > 0:
                        collect_samples(batch, exp, use_masked, samples, self.num_samples_shown)
            log.info("evaluated %d prompts (%.0f s)", n_prompts, time.time() - t0)
        flat: dict[str, float] = {}
        for name, m in metrics.items():
            flat.update(m.compute(prefix=name))
        return {
            "metrics": flat,
            "counts": counts,
            "num_prompts": n_prompts,
            "reward_errors": n_errors,
            "seconds": time.time() - t0,
            "samples": samples,
        }


# ---------------------------------------------------------------------------------------------- reporting
_PCT = ("acc", "reward", "format", "vision_gap", "reward_gap")
_HEADLINE = (
    "acc",
    "acc_masked",
    "vision_gap",
    "reward",
    "reward_masked",
    "reward_gap",
    "format",
    "format_masked",
    "response_length",
    "response_length_masked",
    "kl_prcp",
)


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    base = key.split("/")[0]
    if base.startswith(_PCT) and not base.startswith("response_length"):
        return f"{100 * value:.2f}"
    if base.startswith("kl_prcp"):
        return f"{value:.4f}"
    return f"{value:.1f}"


def format_markdown(result: dict[str, Any], protocols: list[str], title: str) -> str:
    """Headline table (metric x protocol) and per-task / per-vision-dependency tables."""
    m = result["metrics"]
    lines = [
        f"# {title}",
        "",
        f"{result['num_prompts']} prompts. Accuracy, reward, format and gaps in %.",
        "",
    ]
    lines += ["| metric | " + " | ".join(protocols) + " |", "|---" * (len(protocols) + 1) + "|"]
    for key in _HEADLINE:
        vals = [m.get(f"{p}/{key}") for p in protocols]
        if any(v is not None for v in vals):
            lines.append(f"| {key} | " + " | ".join(_fmt(key, v) for v in vals) + " |")
    for tag, title_ in (("task", "task type"), ("vd", "vision dependency")):
        cats = sorted(result["counts"][tag])
        if not cats:
            continue
        cols = [f"acc_by_{tag}", f"acc_masked_by_{tag}", f"vision_gap_by_{tag}"]
        if tag == "vd":
            cols.append("kl_prcp_by_vd")
        head = [f"{p} {c.replace(f'_by_{tag}', '')}" for p in protocols for c in cols]
        lines += ["", f"## Per {title_}", "", f"| {tag} | n | " + " | ".join(head) + " |"]
        lines.append("|---" * (len(head) + 2) + "|")
        for c in cats:
            vals = [_fmt(col, m.get(f"{p}/{col}/{c}")) for p in protocols for col in cols]
            lines.append(f"| {c} | {result['counts'][tag][c]} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- policy
def _load_kwargs(model_cfg: DictConfig) -> dict[str, Any]:
    """The keys of ``model_cfg`` that :func:`load_policy` accepts (dtype, attention, pixel bounds, ...)."""
    accepted = set(inspect.signature(load_policy).parameters) - {"path", "gradient_checkpointing"}
    return {k: model_cfg[k] for k in accepted if k in model_cfg}


def _run_dir(ckpt: Path) -> Path:
    """The training run a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``)."""
    ckpt = ckpt.resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _run_overrides(ckpt: Path) -> list[str]:
    """The training run's Hydra overrides (``<run>/.hydra/overrides.yaml``), for error messages."""
    try:
        return [str(x) for x in OmegaConf.load(_run_dir(ckpt) / ".hydra" / "overrides.yaml")]
    except Exception:
        return []


def load_eval_policy(
    cfg: DictConfig, base_dir: Path | str, ckpt: str | None, datamodule: Any = None
) -> tuple[torch.nn.Module, Any, str]:
    """The policy to evaluate, its processor and a description of where it came from (see module doc).

    ``base_dir``: the model :func:`papo.pipeline.resolve_model_dir` resolves; ``ckpt``: a checkpoint file
    (its ``policy.*`` weights replace every weight of ``base_dir``'s model) or None.
    """
    kwargs = _load_kwargs(cfg.model)
    if ckpt:
        path = Path(ckpt)
        policy, processor = load_policy(base_dir, **kwargs)
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        weights = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
        if not weights:
            raise ValueError(f"{path} has no 'policy.*' weights (is it a PapoModule checkpoint?)")
        try:
            missing, unexpected = policy.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # shape mismatch: another model size/config than training
            raise RuntimeError(
                f"{path} does not fit the model resolved from this config ({base_dir}). Pass the training "
                f"run's model overrides (its overrides: {_run_overrides(path)}).\n{e}"
            ) from e
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not match the model {base_dir}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}. Pass the training run's model overrides: {_run_overrides(path)}"
            )
        return policy, processor, f"checkpoint {path} (architecture from {base_dir})"
    policy_dir = base_dir
    if not cfg.model.get("path") and cfg.get("warm_start") and cfg.warm_start.get("enabled", False):
        from papo.warm_start import ensure_warm_start

        datamodule.setup("fit")
        policy_dir = ensure_warm_start(cfg, Path(base_dir), datamodule.train_set)
    policy, processor = load_policy(policy_dir, **kwargs)
    return policy, processor, f"model {policy_dir}"


# ---------------------------------------------------------------------------------------------- entry
@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the configured policy on ``eval.split``; write JSON + Markdown; return the result dict."""
    import hydra

    from papo.data.synthetic import synthetic_corpus
    from papo.pipeline import attach_prompt_filter, instantiate_list, instantiate_masking, resolve_model_dir
    from papo.utils.checkpointing import resolve_ckpt_path

    ev = cfg.eval
    if ev.split not in ("train", "val", "test"):
        raise ValueError(f"eval.split={ev.split!r}; valid: train, val, test")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True)
    # a .ckpt file or a run directory (its newest checkpoint)
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.output_dir, "checkpoints"))
    datamodule = hydra.utils.instantiate(cfg.data, masking=instantiate_masking(cfg.get("masking")))
    base_dir = resolve_model_dir(cfg.model, corpus_fn=synthetic_corpus)
    attach_prompt_filter(datamodule, base_dir, cfg)  # the prompts training-time validation sees
    policy, processor, source = load_eval_policy(cfg, base_dir, ckpt, datamodule)
    L.seed_everything(cfg.seed, workers=True)  # sampling independent of whether a warm start was built
    device = ev.get("device") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    reward_fn = build_reward_fn(cfg.reward)  # weighted components of configs/reward (papo.rewards.components)
    evaluator = Evaluator(
        policy,
        processor,
        reward_fn,
        max_prompt_length=cfg.rollout.max_prompt_length,
        generation_batch_size=cfg.rollout.generation_batch_size,
        decoder=cfg.rollout.get("decoder", "lean"),
        on_error=cfg.reward.get("on_error", "raise"),
        device=device,
        kl_prcp=bool(ev.get("kl_prcp", True)),
        kl_temperature=float(cfg.rollout.temperature),
        micro_batch_size=int(cfg.algo.micro_batch_size) if cfg.get("algo") else 64,
        num_samples_shown=int(ev.get("num_samples_shown", 8)),
    )
    protocols = protocols_from_cfg(ev, int(ev.get("max_new_tokens") or cfg.rollout.max_new_tokens))
    loader = {"train": datamodule.train_dataloader, "val": datamodule.val_dataloader}.get(
        ev.split, datamodule.test_dataloader
    )()
    log.info(
        "evaluating %s on %s/%s: %s",
        source,
        cfg.data.get("dataset_name"),
        ev.split,
        [p.name for p in protocols],
    )
    result = evaluator.run(loader, protocols, masked=bool(ev.get("masked", True)), limit=ev.get("limit"))
    samples = result.pop("samples")
    result.update(
        source=source,
        ckpt_path=ckpt,
        dataset=cfg.data.get("dataset_name"),
        split=ev.split,
        protocols={p.name: vars(p.gen) for p in protocols},
        masking=OmegaConf.to_container(cfg.masking, resolve=True) if cfg.get("masking") else None,
        seed=int(cfg.seed),
    )
    title = f"Evaluation of {source} on {result['dataset']}/{ev.split}"
    table = format_markdown(result, [p.name for p in protocols], title)
    print("\n" + table, flush=True)
    out_dirs = [Path(ev.get("output_dir") or cfg.paths.output_dir)]
    if ckpt and ev.get("write_to_run_dir", True):  # also next to the training run
        out_dirs.append(_run_dir(Path(ckpt)) / "eval")
    stem = f"eval_{ev.split}" + (f"_{Path(ckpt).stem}" if ckpt else "")
    for out in out_dirs:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        (out / f"{stem}.md").write_text(table)
        if samples:
            write_samples(samples, out / f"{stem}_samples", "samples", title=f"Samples: {title}")
        log.info("wrote %s and %s", out / f"{stem}.json", out / f"{stem}.md")
    loggers = instantiate_list(cfg.get("logger"))
    for lg in loggers:
        lg.log_metrics({f"eval/{ev.split}/{k}": v for k, v in result["metrics"].items()}, step=0)
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(lg, WandbLogger) and samples:
            from papo.callbacks.sample_table import wandb_sample_table

            lg.experiment.log({f"eval/{ev.split}/samples": wandb_sample_table(samples)})
        lg.finalize("success")
    result["output_files"] = [str(d / f"{stem}.json") for d in out_dirs]
    return result
