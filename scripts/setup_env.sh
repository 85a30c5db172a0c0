#!/usr/bin/env bash
# Create (once) and update the project's virtual environment in .venv.
# Idempotent: re-runs only when pyproject.toml or this script changed (stamp file).
# torch/torchvision: pinned to builds that exist as local files on our CPU machines (see README
# "Installation"); on GPU machines any recent torch works (set PAPO_TORCH_SPEC to override).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.papo-installed
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [[ -f $STAMP && "$(cat $STAMP)" == "$want" ]]; then
  exit 0
fi
if [[ ! -x $VENV/bin/python ]]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if [[ -z "${PAPO_TORCH_SPEC:-}" ]]; then
  case "$(uname -m)" in
    aarch64|arm64) PAPO_TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
    *) PAPO_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi
echo "[setup] installing $PAPO_TORCH_SPEC (first run only; a few minutes)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $PAPO_TORCH_SPEC
echo "[setup] installing papo and its dependencies"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "$want" > "$STAMP"
echo "[setup] done"
