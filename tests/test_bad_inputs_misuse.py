"""Misuse that type-valid configs and ordinary operations allow: each class here ended in a raw traceback
after the model and data had loaded, or in a run that looked finished. Now: a one-line config error before
anything loads (exit status 2), or a clear exit status.

- trainer keys only Lightning's Trainer checks (accelerator without the device, devices, precision, limits):
  ``papo.pipeline.check_trainer`` builds the Trainer once before anything loads;
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
    from papo.pipeline import check_trainer

    with pytest.raises(ConfigError) as err:
        check_trainer(compose_cfg([override]).trainer)
    message = str(err.value)
    assert message.startswith("trainer: Lightning's Trainer refuses") and needle in message, message
    assert "\n" not in message


def test_shipped_cpu_trainers_pass_the_check() -> None:
    from papo.pipeline import check_trainer

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
