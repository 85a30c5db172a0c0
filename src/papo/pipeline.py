"""The training pipeline behind ``src/train.py``: instantiate everything from the config, in the order of
lightning-hydra-template (data, model, callbacks, loggers, trainer), warm-start when needed, validate
before RL, train, validate after, print the comparison, return the metrics."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from papo.config import TrainRunConfig, validate_config
from papo.preflight import check_trainer, check_val_rows, create_cache_dirs
from papo.run_setup import (
    attach_prompt_filter,
    attach_val_sets,
    instantiate_group,
    instantiate_list,
    instantiate_masking,
    resolve_model_dir,
)
from papo.utils.checkpointing import preserve_csv_log, resolve_readable_checkpoint
from papo.utils.finished_runs import (
    DROPPED_ROWS_FILE,
    FINAL_METRICS_FILE,
    VAL_BEFORE_AFTER_FILE,
    VAL_BEFORE_FILE,
    VAL_SETS_TABLE,
    load_final_metrics,
    returned_metrics,
    set_aside_incomplete,
    set_aside_previous_run,
)
from papo.utils.provenance import provenance
from papo.utils.resume_config import SaveRunConfig, check_resume_config, flatten
from papo.utils.secrets import redact_secrets
from papo.utils.wandb_resume import continue_wandb_run
from papo.utils.wandb_setup import start_loggers
from papo.utils.wrappers import task_wrapper

log = logging.getLogger(__name__)

# Lightning warns that manual-optimisation checkpoints hold the post-step state: that is what we want.
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
# the frozen reference model is in eval mode on purpose
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def resolve_resume(cfg: DictConfig, ckpt_path: str | None) -> str | None:
    """The checkpoint file ``cfg.ckpt_path`` names, checked to be readable
    (papo.utils.checkpointing.resolve_readable_checkpoint), or None.

    ``last`` is the newest checkpoint of THIS run's checkpoint dir: resume a run by re-using its directory,
    ``hydra.run.dir=<run dir> ckpt_path=last``; or pass the run dir / a ``.ckpt`` file as ``ckpt_path``.
    """
    mc = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    ckpt_dir = mc.get("dirpath") or Path(cfg.paths.output_dir, "checkpoints")
    ckpt = resolve_readable_checkpoint(ckpt_path, ckpt_dir)  # a CheckpointNotFoundError is a ConfigError
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    return ckpt


def format_comparison(
    before: dict[str, float], after: dict[str, float], extra_keys: list[str] | None = None
) -> str:
    """A small table of the headline val metrics before and after RL (greedy, then avg@k sampled); with named
    val sets, ``extra_keys`` (each set's and each group average's accuracy)."""
    names = (
        "val/acc",
        "val/acc_masked",
        "val/vision_gap",
        "val/format",
        "val/reward",
        "val/sampled/acc",
        "val/sampled/acc_masked",
        "val/sampled/vision_gap",
        *(extra_keys or []),
    )
    keys = [k for k in names if k in after]
    width = max([26, *(len(k) + 2 for k in keys)])
    lines = [f"{'metric':<{width}}{'before RL':>12}{'after RL':>12}{'change':>10}"]
    for k in keys:
        b, a = before.get(k, float("nan")), after[k]
        lines.append(f"{k:<{width}}{b:>12.4f}{a:>12.4f}{a - b:>+10.4f}")
    return "\n".join(lines)


def build_module(
    cfg: DictConfig, policy_dir: Path | str, total_steps: int, val_sets: list[Any] | None = None
) -> Any:
    """The RL LightningModule for ``cfg``: loss components from ``cfg.loss.components``, the optimiser, LR schedule
    and rollout backend from their ``_partial_`` targets, the groups validated by the module's typed configs;
    ``val_sets``: the named validation sets (:func:`papo.run_setup.attach_val_sets`). Shared by training and the
    benchmark."""
    from papo.blocks.composition import MethodBlocks
    from papo.models.papo_module import PapoModule

    components = {
        name: instantiate_group(c, f"loss.components.{name}")
        for name, c in (cfg.loss.get("components") or {}).items()
    }
    # the method's non-loss blocks: one option of each group, none = no block (configs/<group>/none.yaml)
    blocks = MethodBlocks(**{g: instantiate_block(cfg.get(g), g) for g in BLOCK_GROUPS})
    return PapoModule(
        policy_path=str(policy_dir),
        model_cfg=cfg.model,
        algo=cfg.algo,
        rollout=cfg.rollout,
        reward=cfg.reward,
        optim=cfg.optim,
        components=components,
        total_steps=total_steps,
        optimizer=instantiate_group(cfg.optim.optimizer, "optim.optimizer"),
        scheduler=instantiate_group(cfg.optim.scheduler, "optim.scheduler"),
        rollout_backend=instantiate_group(cfg.rollout.backend, "rollout.backend"),
        val_sets=val_sets,
        blocks=blocks,
    )


#: the config groups of the non-loss method blocks (papo.blocks.composition.MethodBlocks' arguments)
BLOCK_GROUPS = ("sensitivity", "token_selection", "advantage_shaping", "rollout_view")


def instantiate_block(cfg: DictConfig | None, group: str = "block") -> Any:
    """A method block of ``configs/<group>`` (None when the group is ``none``: ``_target_: null``)."""
    if cfg is None or not cfg.get("_target_"):
        return None
    return instantiate_group(cfg, group)


DROPPED_ROWS_METRIC = "data/dropped_rows_setup"


def write_dropped_rows(datamodule: Any, output_dir: str | Path) -> list[dict[str, Any]]:
    """Write every row the datamodule's setup scan dropped (bad rows with ``data.on_bad_row=skip``, prompts
    over ``rollout.max_prompt_length``) to ``<output_dir>/dropped_rows.jsonl``, one JSON object per row
    (dataset, split, row, uid, reason); the file is written (empty) even when nothing was dropped. Returns
    the rows. Rank 0 writes; every rank returns the same list."""
    from lightning.pytorch.utilities import rank_zero_only

    rows = list(getattr(datamodule, "dropped_rows", None) or [])
    if rank_zero_only.rank == 0:
        path = Path(output_dir, DROPPED_ROWS_FILE)
        if hasattr(datamodule, "write_dropped_rows"):  # also appends decode-time skips later
            datamodule.write_dropped_rows(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        if rows:
            log.warning("%d row(s) dropped at setup; the list is in %s", len(rows), path)
    return rows


class LogSetupDrops(L.Callback):
    """Logs the number of rows the setup scan dropped (``data/dropped_rows_setup``) and, when text-only rows
    are allowed, the number of rows without an image (``data/text_only_rows``) once, when fitting starts,
    through every logger of the trainer (at the restored global step after a resume)."""

    def __init__(self, count: int, text_only: int | None = None) -> None:
        self.count = int(count)
        self.text_only = text_only

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {DROPPED_ROWS_METRIC: float(self.count)}
        if self.text_only is not None:
            metrics["data/text_only_rows"] = float(self.text_only)
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    """Warm start (if enabled) then RL. Returns val metrics after RL (plus ``before/...`` keys)."""
    run: TrainRunConfig = validate_config(cfg)  # every problem at once, before anything loads
    if run.skip_finished:  # re-run sweeps resume: a finished job returns its saved metrics
        final = load_final_metrics(cfg.paths.output_dir)
        if final is not None:
            log.info("finished earlier (%s): skipped", Path(cfg.paths.output_dir, FINAL_METRICS_FILE))
            return returned_metrics(final)
        if run.ckpt_path is None and rank_zero_only.rank == 0:
            set_aside_incomplete(cfg.paths.output_dir)
    ckpt = resolve_resume(cfg, run.ckpt_path)  # before any model loads: a bad ckpt_path fails now
    container = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k != "hydra"
    }
    flat_config = redact_secrets(flatten(container))  # no credentials in W&B / hparams.yaml / checkpoints
    if ckpt is not None:  # another model: an error now; any other change: one warning listing the keys
        check_resume_config(ckpt, flat_config)
    check_trainer(cfg.trainer)  # Lightning's own checks of the trainer keys, before anything loads
    create_cache_dirs(cfg)  # a cache location that cannot be created fails now
    # a fresh run in an earlier run's directory: that run's outputs move aside, intact
    if run.ckpt_path is None and not run.skip_finished and rank_zero_only.rank == 0:
        set_aside_previous_run(cfg.paths.output_dir)
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    L.seed_everything(run.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    view = instantiate_masking(cfg.get("masking"))
    views = run.algo.group_size if getattr(view, "per_response", False) else 1  # one per response | prompt
    datamodule = instantiate_group(cfg.data, "data", masking=view, masked_views_per_prompt=views)

    from papo.data.synthetic import synthetic_corpus

    base_dir = resolve_model_dir(run.model, corpus_fn=synthetic_corpus)
    attach_prompt_filter(datamodule, base_dir, run.model, run.rollout)
    val_sets = attach_val_sets(datamodule, cfg.get("val_sets"))  # several named val sets, or none
    try:
        datamodule.setup("fit")
    finally:  # also when every row is bad: the error points at this file
        dropped = write_dropped_rows(datamodule, cfg.paths.output_dir)
    if run.validate_before or run.validate_after:
        check_val_rows(datamodule, bool(val_sets))
    policy_dir = base_dir
    if run.warm_start.enabled:
        from papo.warm_start import ensure_warm_start

        policy_dir = ensure_warm_start(cfg, Path(base_dir), datamodule.train_set)
        if (
            run.warm_start.continue_steps
        ):  # continued-SFT control (configs/experiment/repro/sft_continued.yaml)
            from papo.warm_start.continued import continue_warm_start

            policy_dir = continue_warm_start(cfg, policy_dir, datamodule.train_set)
        L.seed_everything(run.seed, workers=True)  # RL seed independent of whether SFT just ran

    module = build_module(cfg, policy_dir, total_steps=run.trainer.max_steps, val_sets=val_sets)
    text_only = getattr(datamodule, "text_only_rows", None)
    text_only_count = sum(text_only.values()) if getattr(datamodule, "allow_text_only", False) else None
    callbacks = [
        *instantiate_list(cfg.get("callbacks")),
        LogSetupDrops(len(dropped), text_only_count),
        SaveRunConfig(flat_config),  # compared with the config of a resume (papo.utils.resume_config)
    ]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback when bars are off
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    if ckpt is not None and continue_wandb_run(cfg.get("logger")):  # one W&B run across a resume
        log.info("resuming W&B run %s", cfg.logger.wandb.id)
    loggers = start_loggers(cfg.get("logger"))  # W&B unreachable: offline, with one warning
    if ckpt is not None:  # resuming in the same run dir: keep the CSV log Lightning would delete
        for lg in loggers:
            if isinstance(lg, CSVLogger):
                preserve_csv_log(lg.log_dir)
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(flat_config)

    before: dict[str, float] = {}
    before_file = Path(cfg.paths.output_dir, VAL_BEFORE_FILE)  # a resumed run reuses it, not re-validates
    if run.validate_before and ckpt is not None and before_file.exists():
        before = json.loads(before_file.read_text())
        log.info("val before RL: from %s (resumed run)", before_file)
    elif run.validate_before:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        before = dict(module.last_val)
        if trainer.is_global_zero:
            before_file.write_text(json.dumps(before, indent=2) + "\n")
        head = "val" if "val/acc" in before or not val_sets else "val/average/overall"
        if f"{head}/acc" not in before and f"{head}/sampled/acc" in before:  # val sets sampled only
            head += "/sampled"
        log.info(
            "val before RL (%s): acc %.4f, acc_masked %.4f",
            head,
            before.get(f"{head}/acc", float("nan")),
            before.get(f"{head}/acc_masked", float("nan")),
        )
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    rl_seconds = time.perf_counter() - t_fit
    after: dict[str, float] = dict(module.last_val)
    # the trainer's own validation (val_check_interval) may already have run on the final weights
    validated_final = module.last_val_fit_step == trainer.global_step and bool(after)
    if run.validate_after and not validated_final:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        after = dict(module.last_val)
    if before or after:
        table = format_comparison(before, after, module.validation.headline_keys())
        print("\n" + table + "\n", flush=True)
        Path(cfg.paths.output_dir, VAL_BEFORE_AFTER_FILE).write_text(table + "\n")
    if val_sets and after:  # the per-benchmark table of the last validation
        per_set = module.validation.table(after, datamodule.val_set_sizes())
        print("\n" + per_set + "\n", flush=True)
        table_file = VAL_SETS_TABLE.format(step=trainer.global_step)
        Path(cfg.paths.output_dir, table_file).write_text(per_set + "\n")
    if (
        trainer.is_global_zero
    ):  # a run with this file is finished (papo.utils.finished_runs; scripts/ read it)
        final = {"after": after, "before": before, "rl_seconds": rl_seconds, "rl_steps": trainer.global_step}
        final.update(seed=run.seed, policy_dir=str(policy_dir), provenance=provenance(_hydra_command()))
        Path(cfg.paths.output_dir, FINAL_METRICS_FILE).write_text(json.dumps(final, indent=2) + "\n")
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    metrics.update(after)
    metrics.update({f"before/{k}": v for k, v in before.items()})
    return metrics


def _hydra_command() -> str | None:
    """This job's command as Hydra saw it: ``src/train.py`` and its overrides (None outside Hydra), unresolved
    (``${oc.env:...}`` stays as written) and with credentials redacted (papo.utils.secrets)."""
    from hydra.core.hydra_config import HydraConfig

    from papo.utils.secrets import REDACTED, is_secret_key, secret_env_values

    if not HydraConfig.initialized():
        return None
    secrets = secret_env_values()

    def clean(override: str) -> str:
        key, eq, _ = override.partition("=")
        if eq and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]):
            return f"{key}={REDACTED}"
        for secret in secrets:
            override = override.replace(secret, REDACTED)
        return override

    overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    return " ".join(["src/train.py", *(clean(str(o)) for o in overrides)])


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
