"""A training run's checkpoint: one plain dict in ``RUN/ckpt.safetensors``, written atomically.

The file is safetensors: the tensors, and the rest of the dict as JSON in its metadata
(retro.model.checkpoint_file), so loading one runs no code. Checkpoints of format version 1 were
torch.save files (``RUN/ckpt.pt``); they are read with torch's restricted unpickler (weights_only,
numpy arrays allowed), and the next save of the run replaces them. A legacy file that needs more
than that is refused; ``retro ckpt convert RUN --to canonical --trust-pickle`` converts one you
made yourself, once.

Keys (format version 2, the same as version 1):

- ``format_version`` (int), ``kind`` ("retro" or "gpt"), ``config`` (``dataclasses.asdict`` of the
  :class:`retro.model.RetroConfig`), ``model`` (the state dict, without torch.compile's prefix);
- ``step`` (optimizer steps done), ``optimizer`` (its state dict, or None for a weights-only
  checkpoint), ``data_position`` (samples consumed, for an exact resume), ``rng`` (states of
  python, numpy and torch), ``train_args`` (the run's settings as plain values);
- ``db`` (what the model was trained against: path, tokenizer, chunk_size, block_size, embedder
  name and dimension), so that evaluation and generation can refuse a mismatched database;
  :func:`db_identity` makes it (adding ``tokenizer_sha256``, ``eod_id``, ``vocab_size``,
  ``n_nbrs`` and ``train_data``, a sha256 over the train stream and its neighbour ids) and
  :func:`db_mismatches` compares it with a database.

Optional keys written by ``retro train``: ``frozen`` (names of the parameters that were not
trained, e.g. the decoder in RETRO-fit; absent or empty: all trained) and ``world_size`` (the
ranks that trained it, whose product with batch_size and grad_accum a resumed run must keep;
absent: 1). A run under torchrun writes a DCP checkpoint beside it
(retro.train.distributed_checkpoint) and this file at its end.

The same directory holds ``log.jsonl`` (one JSON object per logged step) and plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from retro.errors import RetroError
from retro.files import atomic_file
from retro.model import GPT, Retro, RetroConfig
from retro.model.checkpoint_file import (CHECKPOINT, LEGACY_CHECKPOINT, UnsafeCheckpointError,
                                         checkpoint_path, load_state, save_state)

FORMAT_VERSION = 2
KINDS = {"retro": Retro, "gpt": GPT}
REQUIRED = ("format_version", "kind", "config", "model", "step")


class CheckpointError(RetroError):
    """A run directory or checkpoint that cannot be used, with the reason."""


def save_checkpoint(run: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes state (see the module docstring) to RUN/ckpt.safetensors via a temp file, fsync and
    a rename; a legacy RUN/ckpt.pt beside it, now superseded, is removed."""
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint state lacks {missing}")
    if state["kind"] not in KINDS:
        raise CheckpointError(f"kind must be one of {sorted(KINDS)}, got {state['kind']!r}")
    path = checkpoint_path(run).with_suffix(".safetensors")
    with atomic_file(path) as file:
        save_state(file, state)
    if path.name == CHECKPOINT:
        path.with_name(LEGACY_CHECKPOINT).unlink(missing_ok=True)
    return path


def load_checkpoint(run: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trust_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint dict of a run directory (or a checkpoint file), checked for format and keys.
    trust_pickle: read a legacy ckpt.pt with the full unpickler, running what it holds (only for a
    file you made yourself)."""
    path = checkpoint_path(run)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} (is {Path(run)} a training run?)")
    try:
        state = load_state(path, map_location, trust_pickle)
    except UnsafeCheckpointError as error:
        raise CheckpointError(
            f"{error}. If you made this file yourself, convert it once: retro ckpt convert "
            f"{path.parent} --to canonical --trust-pickle") from error
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
    config = RetroConfig.from_saved(state["config"])
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


# What a model depends on in a database (the rest of db_identity says which data it was fitted to).
MODEL_DB_KEYS = ("tokenizer", "tokenizer_sha256", "chunk_size", "block_size")


def db_identity(db: Any) -> dict[str, Any]:
    """The ``db`` field of a checkpoint for a :class:`retro.db.Database`."""
    manifest = db.manifest
    tokenizer, embedder = manifest.components["tokenizer"], manifest.components["embedder"]
    train_files = ("tokens/train/stream.npy", "neighbours/train/ids.npy")
    train_data = hashlib.sha256(
        "".join(manifest.files[name]["sha256"] for name in train_files).encode()).hexdigest()
    return {
        "path": str(Path(db.root).resolve()),
        "tokenizer": manifest.config["tokenizer"],
        "tokenizer_sha256": tokenizer["sha256"],
        "eod_id": int(tokenizer["eod_id"]),
        "vocab_size": int(tokenizer["vocab_size"]),
        "chunk_size": db.chunk_size,
        "block_size": db.block_size,
        "n_nbrs": db.n_nbrs,
        "embedder": embedder["name"],
        "embedder_dim": int(embedder["dim"]),
        "train_data": train_data,
    }


def db_mismatches(stored: dict[str, Any], db: Any,
                  keys: tuple[str, ...] = MODEL_DB_KEYS) -> list[str]:
    """Lines "key: the run has X, the database Y" for each of keys where db differs from stored."""
    current = db_identity(db)
    return [f"{key}: the run has {stored.get(key)!r}, the database {current[key]!r}"
            for key in keys if stored.get(key) != current[key]]
