"""The torch device a command runs on, from its name: "auto" picks CUDA when torch sees a GPU, and
a CUDA device asked for where torch sees none is refused with a clear message, not a deep error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retro.errors import RetroError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, hint: str = "") -> torch.device:
    """torch.device(name), "auto" as "cuda" or "cpu"; hint ends the error of a missing GPU (what
    to pass instead)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise RetroError(f"unknown device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RetroError(f"device {name!r} asked for, but torch sees no CUDA device"
                         + (f": {hint}" if hint else ""))
    return device
