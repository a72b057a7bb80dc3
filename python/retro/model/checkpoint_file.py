"""Checkpoint files that loading cannot turn into code: a dict of tensors and plain values in one
safetensors file, and the torch.save files of older retro read through torch's restricted
unpickler.

The safetensors file holds every tensor of the dict (deduplicated: tied weights are stored once);
its metadata ``retro`` holds the rest as JSON, each tensor replaced by ``{"__tensor__": name}``.
Tuples, dicts with keys other than strings and small numpy arrays (numpy's RNG state) are tagged
so that the dict read back equals the one written (an exact resume needs the RNG states and the
optimizer's hyper-parameters bit for bit). Nothing in either file is executed on load.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

METADATA_KEY = "retro"
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT = "ckpt.safetensors"  # a run's checkpoint (retro.train.checkpoint)
LEGACY_CHECKPOINT = "ckpt.pt"  # before format version 2: torch.save, read with weights_only=True


class UnsafeCheckpointError(ValueError):
    """A file that cannot be read without running its pickle (a legacy file holding other objects
    than tensors and plain values, or a crafted one)."""


def checkpoint_path(run: str | os.PathLike) -> Path:
    """The checkpoint file of a run directory (RUN/ckpt.safetensors, or a legacy RUN/ckpt.pt where
    only that exists), or the path itself when it names a .safetensors or .pt file."""
    path = Path(run)
    if path.suffix in (SAFETENSORS_SUFFIX, ".pt"):
        return path
    if not (path / CHECKPOINT).exists() and (path / LEGACY_CHECKPOINT).exists():
        return path / LEGACY_CHECKPOINT
    return path / CHECKPOINT


def _tensor_key(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same stored data (tied weights are one tensor twice)."""
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())


def _owned_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """tensor on the CPU, contiguous and owning its whole storage (safetensors refuses views)."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _encode(value: Any, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    if isinstance(value, torch.Tensor):
        key = _tensor_key(value)
        name = seen.get(key) if value.data_ptr() != 0 else None
        if name is None:
            name = f"t{len(tensors)}"
            tensors[name] = _owned_cpu(value)
            seen[key] = name
        return {"__tensor__": name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, seen) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, seen) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, seen) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, seen), _encode(v, tensors, seen)]
                              for k, v in value.items()]}
    raise TypeError(f"a checkpoint holds tensors and plain values, not {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        name = value["__tensor__"]
        if name not in tensors:
            raise ValueError(f"{where} is corrupt: its metadata names a tensor {name!r} it lacks")
        return tensors[name]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, where) for v in value["__tuple__"])
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__items__" in value:
        return {_decode(k, tensors, where): _decode(v, tensors, where)
                for k, v in value["__items__"]}
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def save_state(file: Any, state: dict[str, Any]) -> None:
    """Writes state (tensors and plain values, nested in dicts, lists and tuples) to a binary file
    object as safetensors."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, {})
    file.write(save(tensors, metadata={METADATA_KEY: json.dumps(tree)}))


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               trust_pickle: bool = False) -> dict[str, Any]:
    """The dict save_state wrote to path; a legacy ``.pt`` file (torch.save) is read with
    weights_only=True, numpy arrays allowed (the RNG state older retro stored), unless
    trust_pickle (only for a file you made yourself: its pickle runs).

    Raises UnsafeCheckpointError when a legacy file needs more than the restricted unpickler
    allows, ValueError when the file is not a checkpoint."""
    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return _load_legacy(path, map_location, trust_pickle)
    from safetensors import SafetensorError, safe_open

    device = str(torch.device(map_location))
    try:
        with safe_open(path, framework="pt", device=device) as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file without retro's metadata "
                         f"(the key {METADATA_KEY!r})")
    try:
        tree = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt: its metadata is not JSON ({error})") from error
    return _decode(tree, tensors, path)


def _numpy_globals() -> list[Any]:
    """What the pickle of a numpy array names: the array, its dtype and its reconstructor."""
    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    reconstruct = core.multiarray._reconstruct
    # numpy 1 names it numpy.core.multiarray, numpy 2 numpy._core.multiarray: either file loads
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray,
            np.dtype, *dtypes]


def _load_legacy(path: Path, map_location: str | torch.device, trust_pickle: bool) -> Any:
    if trust_pickle:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # a global the restricted unpickler refuses
        raise UnsafeCheckpointError(
            f"{path} holds objects that loading would have to run as code; it was refused "
            f"({str(error).splitlines()[0]})") from error

