"""Misuse that type-valid configs and ordinary operations allow: each class here ended in a raw traceback
after the model and data had loaded, or in a run that looked finished. Now: a one-line config error before
anything loads (exit status 2), or a clear exit status.

- trainer keys only Lightning's Trainer checks (accelerator without the device, devices, precision, limits):
  ``papo.preflight.check_trainer`` builds the Trainer once before anything loads;
- SIGTERM (preemption, ``kill``, a scheduler's time limit): Lightning's SIGTERMException exits with status 0;
  ``papo.utils.wrappers.task_wrapper`` exits with 143.
"""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from conftest import compose_cfg
from papo.config import ConfigError


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.devices=0", "`Trainer(devices=0)` value is not a valid input"),
        ("trainer.precision=bogus", "Precision 'bogus' is invalid"),
        ("trainer.limit_val_batches=-1", "invalid value -1 for limit_val_batches"),
        ("trainer.val_check_interval=0.5", "`val_check_interval` should be an integer"),
        ("trainer.accelerator=nope", "nope"),
    ],
)
def test_trainer_values_lightning_refuses_are_config_errors(override: str, needle: str) -> None:
    from papo.preflight import check_trainer

    with pytest.raises(ConfigError) as err:
        check_trainer(compose_cfg([override]).trainer)
    message = str(err.value)
    assert message.startswith("trainer: Lightning's Trainer refuses") and needle in message, message
    assert "\n" not in message


def test_shipped_cpu_trainers_pass_the_check() -> None:
    from papo.preflight import check_trainer

    for option in ("default", "cpu", "ddp_sim"):
        check_trainer(compose_cfg([f"trainer={option}"]).trainer)


def test_trainer_is_checked_before_anything_loads(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from papo import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("something loaded before the trainer keys were checked")

    monkeypatch.setattr(pipeline, "resolve_model_dir", boom)
    monkeypatch.setattr(pipeline, "instantiate_masking", boom)
    cfg = make_cfg(["trainer.precision=bogus"])
    with pytest.raises(ConfigError, match="Precision 'bogus' is invalid"):
        pipeline.train(cfg)


def test_sigterm_exits_with_143_not_0(tmp_path, capsys) -> None:
    """Lightning raises SIGTERMException (a SystemExit without a code, i.e. status 0) when SIGTERM arrives in
    fit or validate; the wrapped task exits with 143 and says how to resume."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from papo.utils.wrappers import SIGTERM_EXIT, task_wrapper

    cfg = compose_cfg([])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)

    @task_wrapper
    def stopped(_cfg):
        raise SIGTERMException

    with pytest.raises(SystemExit) as exit_:
        stopped(cfg)
    assert exit_.value.code == SIGTERM_EXIT == 143

    @task_wrapper
    def finished(_cfg):  # any other SystemExit passes through unchanged
        raise SystemExit(0)

    with pytest.raises(SystemExit) as exit_:
        finished(cfg)
    assert exit_.value.code == 0


# ------------------------------------------------------------------ checkpoints that cannot be resumed from
def _checkpoint(path, **extra) -> None:
    """A file with what a checkpoint of src/train.py holds for resuming (entries overridable)."""
    import torch

    entries = {"pytorch-lightning_version": "2.6.0", "state_dict": {"policy.w": torch.zeros(4)}, **extra}
    torch.save({k: v for k, v in entries.items() if v is not None}, path)


def _bad_checkpoints(tmp_path) -> dict[str, object]:
    """name -> path of each kind of file that is no checkpoint to resume from."""
    import torch

    good = tmp_path / "good.ckpt"
    _checkpoint(good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    no_policy = tmp_path / "no_policy.ckpt"
    _checkpoint(no_policy, state_dict={"encoder.w": torch.zeros(2)})
    return {"truncated": truncated, "text": text, "foreign": foreign, "no_policy": no_policy}


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("truncated", "cannot be read as a torch checkpoint"),
        ("text", "cannot be read as a torch checkpoint"),
        ("foreign", "not a checkpoint of src/train.py (no 'pytorch-lightning_version', 'state_dict' entry)"),
        ("no_policy", "not a checkpoint of src/train.py (no 'policy.*' weights"),
    ],
)
def test_unreadable_or_foreign_checkpoint_is_named(tmp_path, kind: str, needle: str) -> None:
    from papo.models.export import ExportError, find_checkpoint
    from papo.utils.checkpointing import CheckpointNotFoundError, resolve_readable_checkpoint

    path = _bad_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointNotFoundError) as err:
        resolve_readable_checkpoint(str(path), tmp_path / "checkpoints")
    assert str(err.value).startswith(f"ckpt_path={path}: ") and needle in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="ckpt_path="):  # src/export.py: the same one line
        find_checkpoint(path)


def test_last_skips_a_newest_checkpoint_that_cannot_be_read(tmp_path, caplog) -> None:
    """A run killed while writing ``last.ckpt`` resumes from its newest readable checkpoint, with a warning."""
    import os

    from papo.utils.checkpointing import CheckpointNotFoundError, resolve_readable_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _checkpoint(ckpts / "step000002.ckpt")
    (ckpts / "last.ckpt").write_bytes((ckpts / "step000002.ckpt").read_bytes()[:100])
    os.utime(ckpts / "step000002.ckpt", ns=(10**9, 10**9))
    with caplog.at_level("WARNING"):
        assert resolve_readable_checkpoint("last", ckpts) == str(ckpts / "step000002.ckpt")
        assert resolve_readable_checkpoint(str(tmp_path / "run"), tmp_path) == str(ckpts / "step000002.ckpt")
    assert "last.ckpt: cannot be read" in caplog.text and "newest readable checkpoint" in caplog.text
    with pytest.raises(CheckpointNotFoundError, match="cannot be read"):  # named explicitly: no fallback
        resolve_readable_checkpoint(str(ckpts / "last.ckpt"), ckpts)
    (ckpts / "step000002.ckpt").write_text("gone")
    with pytest.raises(CheckpointNotFoundError, match=r"no other checkpoint in .* can be read either"):
        resolve_readable_checkpoint("last", ckpts)


def test_unreadable_checkpoint_fails_before_anything_loads(make_cfg, tmp_path, monkeypatch) -> None:
    from papo import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("something loaded before the checkpoint was checked")

    monkeypatch.setattr(pipeline, "resolve_model_dir", boom)
    monkeypatch.setattr(pipeline, "instantiate_masking", boom)
    path = _bad_checkpoints(tmp_path)["truncated"]
    with pytest.raises(ConfigError, match="cannot be read as a torch checkpoint"):
        pipeline.train(make_cfg([f"ckpt_path={path}"]))


# -------------------------------------------------- values a constructor refuses (not in the typed schemas)
@pytest.mark.parametrize(
    ("override", "key", "needle"),
    [
        (
            "+data.bogus=1",
            "data (papo.data.datamodule.PapoDataModule)",
            "unexpected keyword argument 'bogus'",
        ),
        (
            "masking.fill=999",
            "masking (papo.data.masking.RandomPatchMask)",
            "fill must be an int in [0, 255]",
        ),
        (
            "callbacks.model_checkpoint.mode=up",
            "callbacks.model_checkpoint (lightning.pytorch.callbacks.ModelCheckpoint)",
            "`mode` can be min, max but got up",
        ),
    ],
)
def test_a_value_a_constructor_refuses_is_a_config_error(override: str, key: str, needle: str) -> None:
    """Keys the typed schemas do not declare reach the target's constructor; its ValueError / TypeError is a
    one-line ConfigError naming the key and the target, not Hydra's InstantiationException traceback."""
    from papo.run_setup import instantiate_group, instantiate_list, instantiate_masking

    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as err:
        if override.startswith("+data"):
            instantiate_group(cfg.data, "data", masking=None, masked_views_per_prompt=1)
        elif override.startswith("masking"):
            instantiate_masking(cfg.masking)
        else:
            instantiate_list(cfg.callbacks)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and needle in message and "\n" not in message, message


def test_errors_that_are_not_refused_values_pass_through(tmp_path) -> None:
    """A library's own exception (here a missing file) is not re-labelled as a config error."""
    from hydra.errors import InstantiationException
    from omegaconf import OmegaConf

    from papo.run_setup import instantiate_group

    node = OmegaConf.create({"_target_": "datasets.load_from_disk", "dataset_path": str(tmp_path / "nope")})
    with pytest.raises(InstantiationException) as err:
        instantiate_group(node, "data.train_dataset")
    assert not isinstance(err.value, ConfigError)


def _datamodule(overrides: list[str]):
    from papo.run_setup import instantiate_group

    cfg = compose_cfg(["data.train_dataset.size=16", "data.val_dataset.size=4", *overrides])
    return instantiate_group(cfg.data, "data", masking=None, masked_views_per_prompt=1)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("+data.train_dataset.task_weights={count: 1}", "data.train_dataset: Unknown task type(s) ['count']"),
        ("data.train_dataset.image_size=4", "data.train_dataset: image_size must be >= 8, got 4"),
        ("data.train_dataset.size=-1", "data.train_dataset: size must be >= 0, got -1"),
    ],
)
def test_a_dataset_builder_refusing_its_arguments_is_a_config_error(override: str, needle: str) -> None:
    """The splits are built lazily in setup (``_partial_`` builders): their refusals are config errors too."""
    with pytest.raises(ConfigError) as err:
        _datamodule([override]).setup("fit")
    assert str(err.value).startswith(needle) and "\n" not in str(err.value), str(err.value)


def test_batch_larger_than_the_train_split_fails_at_setup() -> None:
    """Found when the data is set up (before the warm start and the validation before RL), not when fit
    starts; the message names the key, the split's size and what to do."""
    dm = _datamodule(["data.batch_size=32"])
    with pytest.raises(
        ConfigError, match=r"data\.batch_size=32 is larger than the train split of 'synthetic' \(16"
    ):
        dm.setup("fit")
    _datamodule(["data.batch_size=16"]).setup("fit")


# ------------------------------------------------------------- resuming with a config that is not the run's
def test_a_resume_that_changes_the_config_is_an_error_for_the_model_and_a_warning_otherwise(
    make_cfg, tmp_path, monkeypatch, caplog
) -> None:
    """The run's config is stored in its checkpoints (papo.utils.resume_config.SaveRunConfig): a real 2-step
    run, then resumes with another model (one-line error, nothing loaded), another KL coefficient and more
    steps (one warning naming each key), and with the config of the checkpoint's run (no warning)."""
    import torch

    from papo import pipeline
    from papo.utils.resume_config import CHECKPOINT_KEY

    pipeline.train(make_cfg(["validate_before=false", "validate_after=false", "logger=none"]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True, mmap=True)[CHECKPOINT_KEY]
    assert saved["model.size"] == "tiny" and saved["algo.kl_coef"] == 0.01 and saved["trainer.max_steps"] == 2
    assert not any(k.startswith(("paths.", "logger.", "callbacks.")) for k in saved)

    def boom(*args, **kwargs):
        raise AssertionError("something loaded before the resume's config was compared")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "resolve_model_dir", boom)
        with pytest.raises(ConfigError) as err:
            pipeline.train(make_cfg([f"ckpt_path={ckpt}", "model=small", "logger=none"]))
    assert str(err.value).startswith(f"model.size='small' differs from the run of ckpt_path={ckpt} ")
    with caplog.at_level("WARNING", logger="papo.utils.resume_config"):
        pipeline.train(
            make_cfg([f"ckpt_path={ckpt}", "algo.kl_coef=0.02", "trainer.max_steps=3", "logger=none"])
        )
    warning = caplog.text
    for line in (
        "algo.kl_coef: 0.01 in the checkpoint's run, now 0.02",
        "trainer.max_steps: 2 in the checkpoint's run, now 3",
    ):
        assert line in warning, warning
    caplog.clear()  # the resume above wrote last.ckpt with its own config: resuming that one changes nothing
    with caplog.at_level("WARNING", logger="papo.utils.resume_config"):
        same = ["algo.kl_coef=0.02", "trainer.max_steps=3", "validate_after=false", "logger=none"]
        pipeline.train(make_cfg([f"ckpt_path={ckpt}", *same]))
    assert "differ from its run" not in caplog.text


def test_eval_of_a_checkpoint_with_another_model_is_a_config_error(tmp_path) -> None:
    from papo.utils.resume_config import CHECKPOINT_KEY, check_same_model

    path = tmp_path / "run.ckpt"
    _checkpoint(path, **{CHECKPOINT_KEY: {"model.size": "tiny", "data.batch_size": 4}})
    check_same_model(str(path), {"model.size": "tiny", "data.batch_size": 64})  # data may differ
    with pytest.raises(ConfigError, match=r"model\.size='small' differs from the run of ckpt_path="):
        check_same_model(str(path), {"model.size": "small"})
    _checkpoint(path)  # an older checkpoint without the stored config: not compared
    check_same_model(str(path), {"model.size": "small"})


@pytest.mark.parametrize("overrides", [["masking.mask_prob=0"], ["masking=noise", "masking.std=0"]])
def test_a_view_that_masks_nothing_with_a_perception_loss_warns(overrides: list[str], caplog) -> None:
    """Legal (a control), but loss=papo then trains without its perception signal: one warning says so."""
    from papo.config import validate_config

    with caplog.at_level("WARNING", logger="papo.config.validate"):
        validate_config(compose_cfg(overrides))
    assert "the masked view is the real image" in caplog.text and "perception KL is 0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="papo.config.validate"):
        validate_config(compose_cfg([*overrides, "loss=none"]))  # no term uses the view: nothing to say
    assert "masked view" not in caplog.text


def test_a_cache_location_that_cannot_be_created_fails_before_anything_loads(make_cfg, tmp_path, monkeypatch):
    """PAPO_CACHE_DIR under a missing or read-only mount (here: under a regular file): one line per key, before
    the model build that used to raise the OSError; a location that can be created is created."""
    from papo import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("something loaded before the cache location was checked")

    monkeypatch.setattr(pipeline, "resolve_model_dir", boom)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.paths.cache_dir = str(blocker / "cache")
        cfg.model.cache_dir = str(blocker / "cache" / "models")
    with pytest.raises(ConfigError) as err:
        pipeline.train(cfg)
    assert err.value.problems[0].startswith(
        f"paths.cache_dir={blocker / 'cache'} (PAPO_CACHE_DIR): cannot create"
    )
    assert err.value.problems[1].startswith(f"model.cache_dir={blocker / 'cache' / 'models'}: cannot create")

    from papo.preflight import create_cache_dirs

    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp_path / "new" / "cache")
        cfg.model.cache_dir = str(tmp_path / "new" / "cache" / "models")
    create_cache_dirs(cfg)
    assert (tmp_path / "new" / "cache" / "models").is_dir()


def test_an_empty_val_split_with_validation_on_is_an_error(make_cfg, monkeypatch) -> None:
    """validate_before / validate_after on an empty val split validated nothing and reported no metrics."""
    from papo import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("the policy was built for a run that cannot validate")

    monkeypatch.setattr(pipeline, "build_module", boom)
    with pytest.raises(
        ConfigError, match=r"^data\.val_dataset has no rows, but validate_before / validate_after"
    ):
        pipeline.train(make_cfg(["data.val_dataset.size=0"]))


def test_an_empty_split_to_evaluate_is_an_error(tmp_path, cache_dir) -> None:
    """src/eval.py on an empty split wrote a report of 0 prompts and exited with status 0."""
    from papo.evaluation.evaluator import evaluate

    small = [
        "data.train_dataset.size=64",
        "warm_start.max_steps=3",
        "warm_start.batch_size=8",
        "num_threads=1",
    ]
    cfg = compose_cfg([*small, "data.test_dataset.size=0", "eval.samples=0"], config_name="eval")
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(tmp_path)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.model.cache_dir = str(cache_dir / "models")
    with pytest.raises(ConfigError, match=r"^data\.test_dataset has no rows: nothing to evaluate"):
        evaluate(cfg)
    assert not list(tmp_path.glob("eval_*"))


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/nonexistent/model", "no such model folder (a local folder, or a hub id 'namespace/name')"),
        ("models/x/y", "no such model folder"),
        ("nobody-papo-test/not-a-model", "not in the local Hugging Face cache, and the hub is offline"),
        ("not-a-papo-model", "not in the local Hugging Face cache, and the hub is offline"),  # a bare hub id
    ],
)
def test_a_model_that_cannot_be_read_is_a_config_error(path: str, needle: str, monkeypatch) -> None:
    """A missing local folder or an uncached hub id with the hub off: one line naming model.path, instead of
    transformers' HFValidationError / "couldn't connect" traceback from the first processor load."""
    from papo.run_setup import resolve_model_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg([f"model.path={path}"])
    with pytest.raises(ConfigError) as err:
        resolve_model_dir(cfg.model)
    assert str(err.value).startswith(f"model.path={path}: ") and needle in str(err.value), str(err.value)


def test_a_model_folder_that_exists_passes(tmp_path) -> None:
    from papo.preflight import check_model_path

    check_model_path(str(tmp_path))


def test_a_target_that_cannot_be_imported_is_a_config_error() -> None:
    from papo.run_setup import instantiate_group

    cfg = compose_cfg(["optim.optimizer._target_=torch.optim.Nope"])
    with pytest.raises(
        ConfigError, match=r"^optim\.optimizer\._target_='torch\.optim\.Nope' cannot be imported"
    ):
        instantiate_group(cfg.optim.optimizer, "optim.optimizer")


# ------------------------------------------------------------------ a fresh run in an earlier run's directory
def test_a_fresh_run_in_an_earlier_runs_directory_keeps_that_run(make_cfg, tmp_path, caplog) -> None:
    """``hydra.run.dir=<an existing run>`` without ``ckpt_path``: Lightning's CSV logger deleted the earlier
    metrics.csv, final_metrics.json was overwritten and both runs' checkpoints mixed (last.ckpt, last-v1.ckpt).
    Now the earlier run's outputs move to previous-<time>/, intact, and the new run starts in a clean directory."""
    from papo import pipeline
    from papo.utils.finished_runs import set_aside_previous_run

    overrides = ["validate_before=false", "logger=csv"]
    pipeline.train(make_cfg(overrides))
    (tmp_path / "notes.md").write_text("mine")  # not a run output: stays (as would a whole project at '.')
    (tmp_path / "data").mkdir()
    first_log = (tmp_path / "csv" / "metrics.csv").read_text()
    first_final = (tmp_path / "final_metrics.json").read_text()
    with caplog.at_level("WARNING", logger="papo.utils.finished_runs"):
        pipeline.train(make_cfg([*overrides, "trainer.max_steps=1"]))
    (previous,) = tmp_path.glob("previous-*")
    assert (
        "an earlier run in" in caplog.text
        and "(to continue a run instead, pass ckpt_path=last)" in caplog.text
    )
    assert (previous / "csv" / "metrics.csv").read_text() == first_log
    assert (previous / "final_metrics.json").read_text() == first_final
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == [
        "last.ckpt",
        "step000001.ckpt",
    ]
    assert '"rl_steps": 1' in (tmp_path / "final_metrics.json").read_text()
    assert (tmp_path / "notes.md").read_text() == "mine" and (tmp_path / "data").is_dir()
    assert not (previous / "notes.md").exists() and (previous / "dropped_rows.jsonl").exists()
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "train.log").write_text("")
    assert set_aside_previous_run(empty) is None  # no run there: nothing moves


def test_setting_a_run_aside_moves_every_file_a_run_writes_and_nothing_else(tmp_path) -> None:
    """The files named by step or rank (val-sets tables, rank records) move with the run; others stay."""
    from papo.utils.finished_runs import FINAL_METRICS_FILE, VAL_SETS_TABLE, set_aside_previous_run

    written = [FINAL_METRICS_FILE, VAL_SETS_TABLE.format(step=4), "rank1.json", "dropped_rows.jsonl"]
    for name in [*written, "notes.md", "rank_notes.json"]:
        (tmp_path / name).write_text(name)
    previous = set_aside_previous_run(tmp_path)
    assert previous is not None and sorted(p.name for p in previous.iterdir()) == sorted(written)
    assert (tmp_path / "notes.md").exists() and (tmp_path / "rank_notes.json").exists()
