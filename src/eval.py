"""Entry point: ``python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [group=option ...]`` (Hydra).

avg@k and greedy accuracy with the real and the masked image (configs/eval.yaml). Works without
installing the package. All logic is in :func:`papo.evaluation.evaluator.evaluate`.
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


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """Run the evaluation; return the greedy accuracy, or with val sets the overall average accuracy (for Hydra
    sweepers). The config and ``ckpt_path`` are
    checked first, before anything loads: an invalid config prints its problems on stderr, one per line,
    and exits with status 2 (papo.utils.wrappers.config_error_exit)."""
    from papo.utils.console_logging import route_lightning_to_root

    route_lightning_to_root()  # each console line once (Lightning's handler and Hydra's both print)
    from papo.config_validation import validate_eval_config
    from papo.utils.wrappers import config_error_exit

    with config_error_exit():
        validate_eval_config(cfg)
        from papo.evaluation.evaluator import evaluate  # checks ckpt_path before anything loads

        result = evaluate(cfg)
    metrics = result["metrics"]
    # the greedy accuracy; with val sets, the overall average's accuracy of the first protocol
    overall = [v for k, v in metrics.items() if k.startswith("average/overall/") and k.endswith("/acc")]
    value = metrics.get("greedy/acc", overall[0] if overall else next(iter(metrics.values()), None))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
