#!/usr/bin/env bash
# Idempotent set-up of everything retro needs, in ./.venv: the CPU torch wheel where no GPU is
# present, CUTLASS headers (no deps), the package itself (CPU build, plus CUDA where nvcc is found)
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

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "installing torch (GPU present)"
    pip install torch
  else
    log "installing the CPU build of torch"
    pip install "torch==2.13.0"
  fi
fi

log "installing build tools and CUTLASS headers"
pip install "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" ninja cmake
pip install --no-deps "nvidia-cutlass==4.2.0.0"

spec="."
[ -n "$extras" ] && spec=".[$extras]"
log "building and installing retro$([ -n "$extras" ] && echo " with extras [$extras]")"
pip install --no-build-isolation "$spec"
"$venv/bin/python" -c "import retro; print('[setup] retro', retro.__version__, '| cuda build:', retro.has_cuda(), '| simd:', retro.simd_level())"
