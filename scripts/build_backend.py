"""The PEP 517 backend: scikit-build-core, plus the CUTLASS headers where the build will use CUDA.

An isolated build (pip install ., python -m build) installs only what the backend asks for. The
CUDA kernels include CUTLASS, which comes from the nvidia-cutlass wheel; a CPU-only build needs
none of it (nor its dependencies, scipy and cuda-python among them), so it is asked for only when
CMake will find nvcc (the search of CMake's check_language(CUDA): $CUDACXX, then PATH, then the
CUDA toolkit's usual homes) and RETRO_ENABLE_CUDA is not OFF.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from scikit_build_core import build as _skbuild
from scikit_build_core.build import (  # noqa: F401  (re-exported hooks, unchanged)
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

CUTLASS = "nvidia-cutlass==4.2.0.0"  # also in scripts/setup_env.sh


def find_nvcc() -> str | None:
    """The CUDA compiler CMake would find, or None."""
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(home):
            candidates.append(str(Path(os.environ[home]) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    return next((c for c in candidates if c and Path(c).is_file()), None)


def cuda_requires() -> list[str]:
    """[CUTLASS] if this build compiles the CUDA kernels, else []."""
    if os.environ.get("RETRO_ENABLE_CUDA", "AUTO").upper() == "OFF":
        return []
    return [CUTLASS] if find_nvcc() else []


def get_requires_for_build_wheel(config_settings: dict | None = None) -> list[str]:
    return [*_skbuild.get_requires_for_build_wheel(config_settings), *cuda_requires()]


def get_requires_for_build_editable(config_settings: dict | None = None) -> list[str]:
    return [*_skbuild.get_requires_for_build_editable(config_settings), *cuda_requires()]
