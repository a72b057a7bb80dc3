#!/usr/bin/env bash
# Idempotent set-up of everything retro needs, in ./.venv: torch (from PyTorch's CPU wheel index
# where no GPU is present), CUTLASS headers (no deps), the package itself (CPU build, plus CUDA where nvcc is found)
# and the extras named in $1 (comma-separated, e.g. "test" or "bench").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv=.venv
python=${PYTHON:-python3}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# PyPI's Linux x86_64 torch is the CUDA build (several GB of CUDA libraries); without a GPU the
# wheels of PyTorch's CPU index are enough. RETRO_TORCH_INDEX names another index (a mirror).
torch_version="2.13.0"
torch_index=${RETRO_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
index_reachable() {
  "$venv/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
PY
}
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "installing torch (GPU present)"
    pip install torch
  elif index_reachable "$torch_index"; then
    log "installing the CPU build of torch from $torch_index"
    pip install "torch==$torch_version" --index-url "$torch_index"
  else
    log "WARNING: $torch_index cannot be reached (set RETRO_TORCH_INDEX to a mirror);" \
      "installing torch==$torch_version with plain pip: on PyPI's Linux x86_64 that is the CUDA build"
    pip install "torch==$torch_version"
  fi
fi

log "installing build tools and CUTLASS headers"
pip install "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" ninja cmake
pip install --no-deps "nvidia-cutlass==4.2.0.0"  # also in scripts/build_backend.py

# This package was distributed as "retro" before: a venv holding both would share its files.
if "$venv/bin/python" -m pip show -f retro 2>/dev/null | grep -q "retro/_core"; then
  log "removing the old distribution 'retro' (now retro-lm)"
  pip uninstall -y retro
fi

spec="."
[ -n "$extras" ] && spec=".[$extras]"
log "building and installing retro-lm$([ -n "$extras" ] && echo " with extras [$extras]")"
pip install --no-build-isolation "$spec"
"$venv/bin/python" -c "import retro; print('[setup] retro-lm', retro.__version__, '| cuda build:', retro.has_cuda(), '| simd:', retro.simd_level())"
