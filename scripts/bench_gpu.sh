#!/usr/bin/env bash
# The prepared GPU check (scripts/bench_gpu.py: what it runs, in what order, under which time budget): on one
# H200 in under 8 minutes, offline; JSON to $OUT/bench_gpu.json when $OUT is set (else --out, else logs/bench/).
#
#   bash scripts/bench_gpu.sh                  # the GPU run (--budget-s 420 by default)
#   bash scripts/bench_gpu.sh --tiny           # CPU dry run of the same code (tiny dims, 1 step per run)
#   python scripts/bench_gpu_report.py JSON    # then: docs/gpu_performance.md's table from that JSON
#
# Python: $PYTHON, else .venv/bin/python, else python3. It needs torch, transformers (5.25.0: the version the
# code is tested with; its sdpa attends a single decode query over the 2 KV heads of the 3B shape without
# repeating them, which 5.17's does 8 times per step), lightning, hydra-core, omegaconf, tokenizers, pillow,
# numpy; the repo itself runs from src/ (no install). This workplace's H200 image has torch 2.11 and
# transformers 5.17 but no hydra-core / omegaconf: carry these wheels (16 MB) in an ignored .whl/ folder; the
# script installs them offline into a target folder that it puts first on PYTHONPATH. Make them here, in the
# repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 \
#     truststore==0.10.5 regex==2026.11.19 hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#
# and run with .whl carried: `PAPO_COMMIT=<git rev-parse HEAD here> bash scripts/bench_gpu.sh` (BENCH_WHEELS=path
# picks another folder; PAPO_COMMIT records the commit: the GPU machine receives the files, not this checkout's
# history, and may report another commit). transformers 5.24.0 with the machine's own huggingface_hub also works
# (its sdpa packs a decode query's heads per KV head just as 5.25's does), and needs only hydra-core, omegaconf,
# antlr4 and transformers carried.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="$(command -v python3 || command -v python || true)"; fi
fi
if [ -z "$PY" ]; then
  echo "bench_gpu.sh: no python found (set PYTHON=/path/to/python)" >&2
  exit 3
fi
WHEELS="${BENCH_WHEELS:-.whl}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE="${BENCH_SITE:-/tmp/papo_bench_site}"
  echo "bench_gpu.sh: installing the carried wheels of $WHEELS into $SITE (no network)"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "bench_gpu.sh: wheel install failed (continuing with what $PY has)" >&2
  fi
fi
if ! "$PY" -c "import torch, transformers, lightning, hydra, omegaconf, tokenizers, PIL, numpy" 2>/dev/null; then
  echo "bench_gpu.sh: $PY lacks packages this check needs (there is no network to install them):" >&2
  "$PY" - <<'EOF' >&2 || true
import importlib
for name in ("torch", "transformers", "lightning", "hydra", "omegaconf", "tokenizers", "PIL", "numpy"):
    try:
        mod = importlib.import_module(name)
        print(f"  ok       {name} {getattr(mod, '__version__', '')}")
    except Exception as err:  # noqa: BLE001
        print(f"  MISSING  {name}: {type(err).__name__}: {err}")
EOF
  echo "  Carry the wheels named in this script's header, or point PYTHON at an environment that has them." >&2
  exit 3
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PROJECT_ROOT="$PWD"
# built stand-ins (the tokenizer/processor source) go to a writable cache
export PAPO_CACHE_DIR="${PAPO_CACHE_DIR:-$PWD/.cache}"
exec "$PY" scripts/bench_gpu.py "$@"
