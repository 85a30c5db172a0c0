"""Entry point: ``python src/export.py ckpt_path=<run or .ckpt> out=<folder> [lora=merge|adapter] [overwrite=true]``.

Writes the trained policy as a Hugging Face model folder (configs/export.yaml, docs/export.md). The overrides
are Hydra's (``model=...`` selects a model preset); no Hydra run directory is created. All logic is in
:func:`papo.models.export.export_policy`. A bad argument prints one line on stderr and exits with status 2;
``--help`` prints this text and the keys.
"""

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from papo.utils.run_env import setup_process_env  # noqa: E402

setup_process_env()

import papo.utils  # noqa: E402,F401  (registers the config resolvers)


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from papo.config import ConfigError
    from papo.models.export import ExportError, export_policy, find_checkpoint, run_model_config

    if {"-h", "--help"} & set(argv):  # not a Hydra app: its usage and keys (configs/export.yaml) by hand
        print(
            __doc__.strip() + "\n\nKeys (configs/export.yaml):\n" + (ROOT / "configs/export.yaml").read_text()
        )
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:  # an unknown key, a typo'd group option, an override Hydra cannot parse: one line, no traceback
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="export", overrides=argv)
    except HydraException as err:
        message = " ".join(str(err).split()).split(" Config search path:")[0]  # the search path: noise here
        print(f"Invalid export: {message}", file=sys.stderr, flush=True)
        return 2
    try:
        ckpt, _ = find_checkpoint(
            cfg.get("ckpt_path") if not OmegaConf.is_missing(cfg, "ckpt_path") else None
        )
        model_cfg = run_model_config(ckpt) if cfg.model_from_run else None
        out = None if OmegaConf.is_missing(cfg, "out") else cfg.out
        export_policy(
            ckpt,
            out,
            model_cfg if model_cfg is not None else OmegaConf.to_container(cfg.model, resolve=True),
            lora=cfg.lora,
            overwrite=bool(cfg.overwrite),
            dtype=cfg.dtype,
            max_shard_size=str(cfg.max_shard_size),
        )
    # ConfigError: the model group (papo.preflight.check_model_path), ckpt_path (a CheckpointNotFoundError)
    except (ExportError, ConfigError) as err:
        print(f"Invalid export: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
