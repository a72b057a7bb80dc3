#!/usr/bin/env bash
# The wheel as a user gets it: built isolated (python -m build: the build requirements come from
# PyPI; CPU only unless RETRO_ENABLE_CUDA says otherwise), installed into a fresh venv with its
# dependencies, imported, one search, its .pth's lm_eval hook in place. The build folder is kept: a
# second run recompiles nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=build/wheel-check
log() { printf '\033[1m[wheel]\033[0m %s\n' "$*"; }

rm -rf "$out/dist" "$out/venv"
log "building the wheel in an isolated environment"
RETRO_ENABLE_CUDA=${RETRO_ENABLE_CUDA:-OFF} "$python" -m build --wheel --outdir "$out/dist" \
  -C build-dir="$out/build" . > "$out.log" 2>&1 || { tail -n 40 "$out.log"; exit 1; }
wheel=$(ls "$out"/dist/retro_lm-*.whl)
log "installing $(basename "$wheel") into a fresh venv"
"$python" -m venv "$out/venv"
"$out/venv/bin/python" -m pip install --disable-pip-version-check -q "$wheel"

cd "$out"  # away from python/retro: the installed package is the one imported
venv/bin/retro --version
venv/bin/python - <<'PY'
import sys

import numpy as np

import retro

x = np.random.default_rng(0).standard_normal((2000, 32), dtype=np.float32)
index = retro.index_factory(32, "IVF16,PQ8")
index.train(x)
index.add(x)
distances, labels = index.search(x[:5], k=3, nprobe=16, rerank=x)
assert (labels[:, 0] == np.arange(5)).all() and (distances[:, 0] < 1e-4).all(), (labels, distances)
assert "torch" not in sys.modules
# retro_lm_eval_hook.pth ran at start-up from site-packages: the finder for `lm_eval --model retro`
assert type(sys.meta_path[0]).__name__ == "RegistryWatcher", sys.meta_path
print(f"[wheel] retro {retro.__version__} from {retro.__file__}: search ok")
PY
