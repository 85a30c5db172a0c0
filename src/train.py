"""Entry point: ``python src/train.py [group=option ...] [key=value ...]`` (Hydra).

Works without installing the package: src/ is put on the import path. All logic is in
:func:`papo.pipeline.train`.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the project root (configs/paths uses it for logs/ and .cache/), wherever the command is run from
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from papo.utils.run_env import setup_process_env

setup_process_env()

import papo.utils  # noqa: E402,F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run training; return the optimised metric (for Hydra sweepers). An invalid config: its problems on
    stderr, one per line, and exit status 2 (papo.utils.wrappers.config_error_exit)."""
    from papo.utils.console_logging import route_lightning_to_root

    route_lightning_to_root()  # each console line once (Lightning's handler and Hydra's both print)
    from papo.pipeline import train
    from papo.utils.wrappers import config_error_exit

    with config_error_exit():
        metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "", None)
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
