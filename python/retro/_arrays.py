"""Turning user inputs (numpy arrays, CPU torch tensors, lists) into what the core takes."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_float32_matrix(x: Any, name: str) -> np.ndarray:
    """Returns x as a C-contiguous float32 array of shape (n, d).

    Accepts numpy arrays and CPU torch tensors of any real floating dtype (float16/64 and
    bfloat16 are converted); integer, boolean, complex and object data and GPU tensors are refused
    with a ValueError naming ``name``. A 1-D input is refused too: pass x[None] for one row.
    """
    if _is_torch_tensor(x):
        x = _torch_to_numpy(x, name)
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must hold floating-point values, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which the core names
        return np.ascontiguousarray(arr, dtype=np.float32)


def as_int64_vector(ids: Any, n: int, name: str = "ids") -> np.ndarray:
    """Returns ids as a C-contiguous int64 array of shape (n,)."""
    if _is_torch_tensor(ids):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


MAX_COUNT = 2**62  # above any k, nprobe or factor the core can take (an int64 with headroom)


def as_count(value: Any, name: str, most: int = MAX_COUNT) -> int:
    """value as an int in [1, most] (a Python or numpy integer), else a short ValueError naming it;
    a count that does not fit is refused here, not by the core's argument conversion."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {type(value).__name__} "
                         f"{value!r:.40}")
    if int(value) < 1:
        raise ValueError(f"{name} must be positive, got {int(value)}")
    if int(value) > most:
        raise ValueError(f"{name} must be at most {most}, got {int(value)}")
    return int(value)


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _torch_to_numpy(t: Any, name: str) -> np.ndarray:
    import torch

    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is a torch tensor on {t.device}; the index runs on the CPU: pass t.cpu()"
        )
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must hold floating-point values, got dtype {t.dtype}")
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    return t.detach().contiguous().numpy()
