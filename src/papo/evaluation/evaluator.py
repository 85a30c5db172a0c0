"""Offline evaluation behind ``src/eval.py``: avg@k and greedy accuracy with the real and the masked image.

Protocols (each one a generation setting): ``greedy`` (T = 0, one response) and ``avg@k`` (k responses
at temperature T; published protocol k = 8, T = 1.0). For each protocol and each view (real image,
masked image with the split's fixed seeded masks) the :class:`~papo.evaluation.metrics.ValidationMetrics`
keys are computed (``detailed=True``): accuracy, reward, format rate, mean response length, per task
type and per vision-dependency level, the vision-reliance gaps, and the held-out perception KL
(``kl_prcp``, on the real-image responses). Results go to ``eval_<split>.json`` and ``eval_<split>.md``.

The policy is either a Lightning checkpoint of an RL run (``ckpt_path``: its ``policy.*`` weights are
loaded into the architecture and processor of the model that :func:`papo.run_setup.resolve_model_dir`
resolves, i.e. the same ``model`` config as training) or a Hugging Face model directory / hub id
(``model.path``); with neither, the policy an RL run would start from (the embedded model after the
cached warm start): the "before RL" baseline.

Several validation sets (``val_sets=papo_eval``: PAPO's nine benchmarks; :mod:`papo.evaluation.val_sets`) are
evaluated one after the other, each with its own sampling protocol and limit; the output then holds every set's
metrics (``<name>/<protocol>/<key>``), the group averages (``average/<group>/<protocol>/<key>``,
:func:`papo.evaluation.suite.group_averages`) and the per-benchmark table (``eval_val_sets*.md``).

Differences from the paper's evaluation: the paper evaluates on nine public benchmarks with vLLM; here
any split of any dataset the datamodule reads, or those benchmarks as val sets, with this project's decoder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from papo.config import ConfigError, EvalConfig, EvalRunConfig, validate_eval_config
from papo.evaluation.metrics import ValidationMetrics
from papo.evaluation.perception import attach_masked_view, heldout_perception_kl
from papo.evaluation.samples import collect_samples, write_samples
from papo.evaluation.suite import group_averages, suite_table
from papo.evaluation.val_sets import SamplingProtocol, ValSet
from papo.models.loading import (
    WeightsMismatch,
    load_policy,
    load_weights_into,
    output_vocab_size,
    padded_vocab_ids,
)
from papo.preflight import create_cache_dirs
from papo.rollout.collect import Generator
from papo.rollout.hf_generate import GenerationConfig
from papo.run_setup import (
    attach_prompt_filter,
    attach_val_sets,
    instantiate_group,
    instantiate_masking,
    resolve_model_dir,
)
from papo.utils.wrappers import task_wrapper

log = logging.getLogger(__name__)


@dataclass
class Protocol:
    """One generation setting of the evaluation."""

    name: str  # "greedy" or "avg@k"
    gen: GenerationConfig


def protocols_from_cfg(ev: EvalConfig, max_new_tokens: int) -> list[Protocol]:
    """``greedy`` (if ``eval.greedy``) and ``avg@<samples>`` at ``eval.temperature`` (if ``eval.samples`` > 0)."""
    out = []
    if ev.greedy:
        out.append(Protocol("greedy", GenerationConfig(max_new_tokens, 0.0, 1.0, 0, 1)))
    if ev.samples > 0:
        gen = GenerationConfig(max_new_tokens, ev.temperature, ev.top_p, ev.top_k, ev.samples)
        out.append(Protocol(f"avg@{ev.samples}", gen))
    return out


def protocols_of_set(protocol: SamplingProtocol, max_new_tokens: int) -> list[Protocol]:
    """A val set's protocols: ``greedy`` and/or ``avg@<samples>`` (:class:`papo.evaluation.val_sets.SamplingProtocol`)."""
    max_new = protocol.max_new_tokens or max_new_tokens
    out = []
    if protocol.greedy:
        out.append(Protocol("greedy", GenerationConfig(max_new, 0.0, 1.0, 0, 1)))
    if protocol.samples > 0:
        gen = GenerationConfig(
            max_new, protocol.temperature, protocol.top_p, protocol.top_k, protocol.samples
        )
        out.append(Protocol(f"avg@{protocol.samples}", gen))
    return out


#: the per-benchmark table's columns (per protocol) and the metrics averaged over the sets of a group
SET_COLUMNS = ("acc", "acc_masked", "vision_gap")


def combine_sets(results: dict[str, dict[str, Any]], sets: list[ValSet]) -> dict[str, Any]:
    """Every set's result under ``<name>/``, the group averages of :data:`SET_COLUMNS` per protocol
    (``average/<group>/<protocol>/<metric>``), and the per-benchmark Markdown table."""
    groups = {s.name: s.group or "other" for s in sets}
    metrics = {f"{name}/{k}": v for name, r in results.items() for k, v in r["metrics"].items()}
    protocols = list(dict.fromkeys(p for r in results.values() for p in r["protocols"]))
    columns = [f"{p}/{c}" for p in protocols for c in SET_COLUMNS]
    for col in columns:
        scores = {n: r["metrics"][col] for n, r in results.items() if col in r["metrics"]}
        for group, value in group_averages(scores, groups).items():
            metrics[f"average/{group}/{col}"] = value
    per_set = {
        n: {c.replace("/", " "): r["metrics"][c] for c in columns if c in r["metrics"]}
        for n, r in results.items()
    }
    counts = {n: r["num_prompts"] for n, r in results.items()}
    table = suite_table(per_set, groups, counts, metrics=[c.replace("/", " ") for c in columns])
    return {"metrics": metrics, "table": table}


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
        self.generator = Generator.for_policy(
            policy, processor, max_prompt_length, generation_batch_size, decoder
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
    cfg: DictConfig, run: EvalRunConfig, base_dir: Path | str, ckpt: str | None, datamodule: Any = None
) -> tuple[torch.nn.Module, Any, str]:
    """The policy to evaluate, its processor and a description of where it came from (see module doc).

    ``base_dir``: the model :func:`papo.run_setup.resolve_model_dir` resolves; ``ckpt``: a checkpoint file
    (its ``policy.*`` weights replace every weight of ``base_dir``'s model) or None.
    """
    kwargs = run.model.load_kwargs()
    kwargs.pop("gradient_checkpointing")  # evaluation only: no backward
    if ckpt:
        path = Path(ckpt)
        policy, processor = load_policy(base_dir, **kwargs)
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        weights = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
        if not weights:
            raise ValueError(f"{path} has no 'policy.*' weights (is it a PapoModule checkpoint?)")
        try:
            load_weights_into(policy, weights)
        except WeightsMismatch as err:  # another model size / config than training
            raise ConfigError(
                f"ckpt_path={path} does not fit the model resolved from this config ({base_dir}): {err}; "
                f"pass the training run's model overrides (its overrides: {_run_overrides(path)})"
            ) from None
        return policy, processor, f"checkpoint {path} (architecture from {base_dir})"
    policy_dir = base_dir
    if not run.model.path and run.warm_start.enabled:
        from papo.warm_start import ensure_warm_start

        datamodule.setup("fit")
        policy_dir = ensure_warm_start(cfg, Path(base_dir), datamodule.train_set)
    policy, processor = load_policy(policy_dir, **kwargs)
    return policy, processor, f"model {policy_dir}"


# ---------------------------------------------------------------------------------------------- entry
@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the configured policy on ``eval.split``; write JSON + Markdown; return the result dict."""

    from papo.data.synthetic import synthetic_corpus
    from papo.utils.checkpointing import resolve_readable_checkpoint

    run = validate_eval_config(cfg)
    ev = run.eval
    # a .ckpt file or a run directory (its newest checkpoint); a bad one is a ConfigError before anything loads
    ckpt = resolve_readable_checkpoint(run.ckpt_path, Path(cfg.paths.output_dir, "checkpoints"))
    if ckpt is not None:  # the model group must name the trained architecture (papo.utils.resume_config)
        from papo.utils.resume_config import check_same_model, flatten

        check_same_model(ckpt, flatten({"model": OmegaConf.to_container(cfg.model, resolve=True)}))
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    L.seed_everything(run.seed, workers=True)
    create_cache_dirs(cfg)
    datamodule = instantiate_group(cfg.data, "data", masking=instantiate_masking(cfg.get("masking")))
    base_dir = resolve_model_dir(run.model, corpus_fn=synthetic_corpus)
    attach_prompt_filter(datamodule, base_dir, run.model, run.rollout)  # the prompts validation sees
    val_sets = attach_val_sets(datamodule, cfg.get("val_sets"))  # several named sets instead of eval.split
    policy, processor, source = load_eval_policy(cfg, run, base_dir, ckpt, datamodule)
    L.seed_everything(run.seed, workers=True)  # sampling independent of whether a warm start was built
    device = ev.device if ev.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    evaluator = Evaluator(
        policy,
        processor,
        run.reward.reward_fn(),
        max_prompt_length=run.rollout.max_prompt_length,
        generation_batch_size=run.rollout.generation_batch_size,
        decoder=run.rollout.decoder,
        on_error=run.reward.on_error,
        device=device,
        kl_prcp=ev.kl_prcp,
        kl_temperature=run.rollout.temperature,
        micro_batch_size=int(cfg.algo.micro_batch_size) if cfg.get("algo") else 64,
        num_samples_shown=ev.num_samples_shown,
    )
    max_new = ev.max_new_tokens or run.rollout.max_new_tokens
    if val_sets:
        return _evaluate_sets(cfg, run, evaluator, datamodule, val_sets, source, ckpt, max_new)
    protocols = protocols_from_cfg(ev, max_new)
    loader = {"train": datamodule.train_dataloader, "val": datamodule.val_dataloader}.get(
        ev.split, datamodule.test_dataloader
    )()
    if len(loader.dataset) == 0:  # an empty report with exit status 0 otherwise
        raise ConfigError(f"data.{ev.split}_dataset has no rows: nothing to evaluate (eval.split={ev.split})")
    log.info(
        "evaluating %s on %s/%s: %s",
        source,
        cfg.data.get("dataset_name"),
        ev.split,
        [p.name for p in protocols],
    )
    result = evaluator.run(loader, protocols, masked=ev.masked, limit=ev.limit)
    samples = result.pop("samples")
    result.update(
        source=source,
        ckpt_path=ckpt,
        dataset=cfg.data.get("dataset_name"),
        split=ev.split,
        protocols={p.name: vars(p.gen) for p in protocols},
        masking=OmegaConf.to_container(cfg.masking, resolve=True) if cfg.get("masking") else None,
        seed=run.seed,
    )
    title = f"Evaluation of {source} on {result['dataset']}/{ev.split}"
    table = format_markdown(result, [p.name for p in protocols], title)
    return _write(cfg, run, result, table, samples, f"eval_{ev.split}", ev.split, ckpt)


def _evaluate_sets(
    cfg: DictConfig,
    run: EvalRunConfig,
    evaluator: Evaluator,
    datamodule: Any,
    sets: list[ValSet],
    source: str,
    ckpt: str | None,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Every val set with its own protocols (``eval.limit`` also caps each set), then the averages and the
    per-benchmark table; the Markdown holds that table, then each set's headline table."""
    ev = run.eval
    loaders = datamodule.val_dataloader()
    results: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    sections = []
    for spec, loader in zip(sets, loaders, strict=True):
        protocols = protocols_of_set(spec.protocol, max_new_tokens)
        log.info("evaluating %s on val set %s: %s", source, spec.name, [p.name for p in protocols])
        res = evaluator.run(loader, protocols, masked=ev.masked, limit=ev.limit)
        samples += [{**x, "val_set": spec.name} for x in res.pop("samples")]
        res["protocols"] = {p.name: vars(p.gen) for p in protocols}
        res["group"] = spec.group
        results[spec.name] = res
        sections.append(
            format_markdown(res, list(res["protocols"]), f"{spec.name} ({spec.group or 'no group'})")
        )
    combined = combine_sets(results, sets)
    result = {
        "metrics": combined["metrics"],
        "sets": results,
        "source": source,
        "ckpt_path": ckpt,
        "val_sets": [s.name for s in sets],
        "masking": OmegaConf.to_container(cfg.masking, resolve=True) if cfg.get("masking") else None,
        "seed": run.seed,
    }
    title = f"Evaluation of {source} on {len(sets)} val sets"
    head = f"# {title}\n\nAccuracy and vision gap in %, per benchmark and averaged per group.\n\n"
    table = (
        head + combined["table"] + "\n\n" + "\n".join("#" + s for s in sections)
    )  # each set's title one level down
    return _write(cfg, run, result, table, samples[: ev.num_samples_shown], "eval_val_sets", "val_sets", ckpt)


def _write(
    cfg: DictConfig,
    run: EvalRunConfig,
    result: dict[str, Any],
    table: str,
    samples: list[dict[str, Any]],
    stem: str,
    tag: str,
    ckpt: str | None,
) -> dict[str, Any]:
    """Print the table; write JSON, Markdown and samples to the output dirs; log to the configured loggers."""
    from papo.utils.wandb_setup import start_loggers

    ev = run.eval
    print("\n" + table, flush=True)
    out_dirs = [Path(ev.output_dir or cfg.paths.output_dir)]
    if ckpt and ev.write_to_run_dir:  # also next to the training run
        out_dirs.append(_run_dir(Path(ckpt)) / "eval")
    stem += f"_{Path(ckpt).stem}" if ckpt else ""
    for out in out_dirs:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        (out / f"{stem}.md").write_text(table)
        if samples:
            write_samples(samples, out / f"{stem}_samples", "samples", title=f"Samples: {stem}")
        log.info("wrote %s and %s", out / f"{stem}.json", out / f"{stem}.md")
    for lg in start_loggers(cfg.get("logger")):  # W&B unreachable: offline, with one warning (as training)
        lg.log_metrics({f"eval/{tag}/{k}": v for k, v in result["metrics"].items()}, step=0)
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(lg, WandbLogger) and samples:
            from papo.callbacks.sample_table import wandb_sample_table

            lg.experiment.log({f"eval/{tag}/samples": wandb_sample_table(samples)})
        lg.finalize("success")
    result["output_files"] = [str(d / f"{stem}.json") for d in out_dirs]
    return result
