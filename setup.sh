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
# d3 6.7.0, one of the two scripts SAEDashboard's feature pages load from a CDN (evals/features.py serves
# local copies; the other, plotly.js, ships with the pinned plotly package): from the npm registry, checked
mkdir -p .cache/assets
if [ ! -s .cache/assets/d3.v6.min.js ]; then
  if curl -sfL --retry 3 https://registry.npmjs.org/d3/-/d3-6.7.0.tgz -o .cache/assets/d3-6.7.0.tgz &&
     echo "0f4883d05b20b1ec95ad57e38bd3df5e4856c6366cd3e6efb294fe7c695250a9  .cache/assets/d3-6.7.0.tgz" | sha256sum -c --quiet &&
     tar -xzf .cache/assets/d3-6.7.0.tgz -C .cache/assets package/dist/d3.min.js; then
    mv .cache/assets/package/dist/d3.min.js .cache/assets/d3.v6.min.js
  else
    echo "note: d3 6.7.0 could not be fetched from the npm registry: the features eval will say so"
  fi
  rm -rf .cache/assets/package .cache/assets/d3-6.7.0.tgz
fi
# headless Chromium for the test that opens the feature pages (skipped, with its reason, where missing)
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null 2>&1 ||
    echo "note: chromium could not be installed; the feature-page rendering test will be skipped"
fi
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -c \
  "from trainers.model import embedded_model_dir; print('embedded model ready:', embedded_model_dir())"
