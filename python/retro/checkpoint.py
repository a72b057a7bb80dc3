"""A training run's checkpoint: one plain dict in ``RUN/ckpt.pt``, written atomically.

Keys (format version 1):

- ``format_version`` (int), ``kind`` ("retro" or "gpt"), ``config`` (``dataclasses.asdict`` of the
  :class:`retro.model.RetroConfig`), ``model`` (the state dict, without torch.compile's prefix);
- ``step`` (optimizer steps done), ``optimizer`` (its state dict, or None for a weights-only
  checkpoint), ``data_position`` (samples consumed, for an exact resume), ``rng`` (states of
  python, numpy and torch), ``train_args`` (the run's settings as plain values);
- ``db`` (what the model was trained against: path, tokenizer, chunk_size, block_size, embedder
  name and dimension), so that evaluation and generation can refuse a mismatched database.

The same directory holds ``log.jsonl`` (one JSON object per logged step) and plots.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from retro.model import GPT, Retro, RetroConfig

CHECKPOINT = "ckpt.pt"
FORMAT_VERSION = 1
KINDS = {"retro": Retro, "gpt": GPT}
REQUIRED = ("format_version", "kind", "config", "model", "step")


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be used, with the reason."""


def checkpoint_path(run: str | os.PathLike) -> Path:
    """RUN/ckpt.pt, or the path itself when it names a file."""
    path = Path(run)
    return path if path.suffix == ".pt" else path / CHECKPOINT


def save_checkpoint(run: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes state (see the module docstring) to RUN/ckpt.pt via a temp file and a rename."""
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint state lacks {missing}")
    if state["kind"] not in KINDS:
        raise CheckpointError(f"kind must be one of {sorted(KINDS)}, got {state['kind']!r}")
    path = checkpoint_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(run: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict of a run directory (or a .pt path), checked for format and keys."""
    path = checkpoint_path(run)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} (is {Path(run)} a training run?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable retro checkpoint: {error}") from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        raise CheckpointError(f"{path} is not a retro checkpoint (missing keys)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}; this retro reads up to "
            f"{FORMAT_VERSION}: upgrade retro"
        )
    if state["kind"] not in KINDS:
        raise CheckpointError(f"{path}: unknown model kind {state['kind']!r}")
    return state


def build_model(state: dict[str, Any]) -> GPT:
    """The model of a checkpoint dict, weights loaded (GPT or Retro, in eval mode)."""
    config = RetroConfig(**state["config"])
    model = KINDS[state["kind"]](config)
    model.load_state_dict(state["model"])
    return model.eval()


def load_model(run: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """(model, checkpoint dict) of a run directory."""
    state = load_checkpoint(run, map_location)
    return build_model(state), state


def config_dict(config: RetroConfig) -> dict[str, Any]:
    """The config as plain values, as stored under ``config``."""
    return dataclasses.asdict(config)
