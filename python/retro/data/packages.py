"""Finding data shipped inside installed PyPI packages without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str, pip_name: str) -> Path:
    """The installed package's directory, found without importing it (some fail to import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{module} is not installed: pip install {pip_name}")
    return Path(spec.submodule_search_locations[0])
