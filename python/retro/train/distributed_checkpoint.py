"""Checkpoints of distributed runs (torch.distributed.checkpoint) and the canonical checkpoint.

A run on one process writes the canonical checkpoint RUN/ckpt.safetensors (retro.train.checkpoint:
one plain dict). A run under torchrun writes a DCP checkpoint instead: each rank its own part of the model
and optimizer state (DDP's replicated tensors once, FSDP2's shards by each owner) into
``RUN/dcp/step-<step>/``, then rank 0 writes ``train_state.safetensors`` there: the canonical dict
without ``model`` and ``optimizer`` (step, data position, RNG, settings, database identity, and
``world_size``), which marks the directory complete (``train_state.pt``, torch.save, before
checkpoint format 2: read with weights_only=True). DCP's own ``.metadata`` is a pickle; it is read
here by an unpickler that builds only DCP's metadata classes, so that no file runs code. The model
and optimizer state are stored by parameter name, not by a rank's layout, so a DCP checkpoint loads
on any world size, with DDP, FSDP2 or none, and converts to and from the canonical one (:func:`dcp_to_canonical`,
:func:`canonical_to_dcp`, ``retro ckpt convert``).

:func:`latest_checkpoint` picks what ``--resume`` continues from: the one of the canonical
checkpoint and the complete DCP directories with the most steps; on a tie the DCP one, which a distributed run writes
first and loads on its own layout without gathering the whole model on every rank.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retro.files import atomic_file
from retro.model import RetroConfig
from retro.model.checkpoint_file import UnsafeCheckpointError, load_state, save_state
from retro.train.checkpoint import (FORMAT_VERSION, KINDS, LEGACY_CHECKPOINT, CheckpointError,
                                    checkpoint_path, config_dict, load_checkpoint,
                                    save_checkpoint)
from retro.train.distributed import unwrap

DCP_DIR = "dcp"
TRAIN_STATE = "train_state.safetensors"  # in a DCP step directory, written last
LEGACY_TRAIN_STATE = "train_state.pt"  # checkpoint format 1
TENSOR_KEYS = ("model", "optimizer")  # what the DCP files hold; the rest is in TRAIN_STATE


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint of a run: canonical (path = its file) or DCP (path = a step directory)."""

    format: str  # "canonical" or "dcp"
    path: Path
    step: int


def step_dir(run: str | Path, step: int) -> Path:
    """RUN/dcp/step-<step>: the DCP checkpoint of a step."""
    return Path(run) / DCP_DIR / f"step-{step:08d}"


def dcp_checkpoints(run: str | Path) -> list[Checkpoint]:
    """The complete DCP checkpoints of a run, oldest first."""
    root = Path(run) / DCP_DIR
    found = [Checkpoint("dcp", path, int(path.name.removeprefix("step-")))
             for path in root.glob("step-*") if _train_state_file(path).exists()]
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run: str | Path) -> Checkpoint | None:
    """The checkpoint with the most steps (the DCP one on a tie), or None if the run has none."""
    found = dcp_checkpoints(run)
    canonical = checkpoint_path(run)
    if canonical.exists():
        found.append(Checkpoint("canonical", canonical, int(load_checkpoint(run)["step"])))
    return max(found, key=lambda c: (c.step, c.format == "dcp"), default=None)


def _train_state_file(step_path: Path) -> Path:
    """A step directory's train state: the safetensors one, or a legacy train_state.pt."""
    path = step_path / TRAIN_STATE
    legacy = step_path / LEGACY_TRAIN_STATE
    return legacy if not path.exists() and legacy.exists() else path


def read_train_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's dict without its tensors (model and optimizer state absent for DCP)."""
    if checkpoint.format == "canonical":
        return load_checkpoint(checkpoint.path)
    path = _train_state_file(checkpoint.path)
    try:
        state = load_state(path)
    except UnsafeCheckpointError as error:
        raise CheckpointError(str(error)) from error
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable retro train state: {error}") from error
    if not isinstance(state, dict) or "config" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a retro train state (missing keys)")
    return state


def _check_model(state: dict[str, Any], model: nn.Module, where: Path) -> None:
    """Raises CheckpointError naming each config field (and the kind) where model differs."""
    if KINDS.get(state.get("kind", "")) is not type(model):
        raise CheckpointError(f"{where} holds a {state.get('kind')!r} model, not a "
                              f"{type(model).__name__}")
    ours = config_dict(model.config)
    theirs = state["config"]
    differ = [f"{key}: the checkpoint has {theirs.get(key)!r}, the model {ours[key]!r}"
              for key in ours if theirs.get(key) != ours[key]]
    if differ:
        raise CheckpointError(f"{where} holds another model:\n  " + "\n  ".join(differ))


def save_dcp(run: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             train_state: dict[str, Any], no_dist: bool = False) -> Path:
    """Writes the DCP checkpoint of train_state["step"]; collective under torch.distributed (every
    rank calls it) unless no_dist. model may be wrapped (DDP) or sharded (FSDP2). The run's other
    step directories (older ones, and any an interrupted save left) are removed once this one is
    complete. Returns the step directory."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = step_dir(run, train_state["step"])
    no_dist = _alone(no_dist)
    main = no_dist or dist.get_rank() == 0
    if main and path.exists():
        shutil.rmtree(path)  # a partial directory of an interrupted save
    if not no_dist:
        dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _quiet_if(no_dist):
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=path,
                 no_dist=no_dist)
    if not no_dist:
        dist.barrier()
    if main:
        kept = {key: value for key, value in train_state.items() if key not in TENSOR_KEYS}
        with atomic_file(path / TRAIN_STATE) as file:
            save_state(file, kept)
        for other in (Path(run) / DCP_DIR).glob("step-*"):  # older ones, complete or not
            if other != path:
                shutil.rmtree(other)
    if not no_dist:
        dist.barrier()
    return path


def _alone(no_dist: bool) -> bool:
    """Whether DCP runs in this process alone: asked for, or no process group."""
    import torch.distributed as dist

    return no_dist or not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_if(no_dist: bool) -> Iterator[None]:
    """Silences DCP's warning that it runs in one process, when that is what was asked for."""
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield


def load_dcp(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None,
             no_dist: bool = False) -> dict[str, Any]:
    """Loads a DCP checkpoint into model (and optimizer, unless None); collective under
    torch.distributed unless no_dist. Returns its train state. Raises CheckpointError if it holds
    another model."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    state = read_train_state(checkpoint)
    inner = unwrap(model)
    _check_model(state, inner, checkpoint.path)
    holder: dict[str, Any]  # DCP loads into it in place
    if optimizer is None:
        holder = {"model": get_model_state_dict(model)}
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        holder = {"model": model_state, "optimizer": optim_state}
    try:
        no_dist = _alone(no_dist)
        with _quiet_if(no_dist):
            dcp.load(holder, storage_reader=_safe_reader(checkpoint.path), no_dist=no_dist)
    except (Exception, CheckpointException) as error:  # missing files, other shapes, refused
        # metadata (DCP's own exception is a BaseException): say which checkpoint
        raise CheckpointError(f"cannot load the DCP checkpoint {checkpoint.path}: "
                              f"{_first_cause(error)}") from error
    if optimizer is None:
        set_model_state_dict(model, holder["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=holder["model"],
                       optim_state_dict=holder["optimizer"])
    return state


# Plain values and functions DCP's metadata names besides its own classes (a layout is stored as
# torch.serialization._get_layout("torch.strided"), the checkpoint id as a path).
_METADATA_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"),
                     ("collections", "OrderedDict"), ("pathlib", "PosixPath"),
                     ("pathlib", "PurePosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata (its dataclasses and enums, torch.Size, dtypes) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        import dataclasses
        import enum

        found = super().find_class(module, name) if module.split(".")[0] in (
            "torch", "collections", "pathlib") else None
        allowed = (
            (module.startswith("torch.distributed.checkpoint") and isinstance(found, type)
             and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)))
            or (module, name) in _METADATA_GLOBALS
            or isinstance(found, (torch.dtype, torch.memory_format, torch.layout))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP's metadata")
        return found


def _safe_reader(path: Path) -> Any:
    """DCP's file reader for path, whose metadata is read by _MetadataUnpickler."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata_path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(metadata_path, "rb") as file:
                data = file.read()
            try:
                metadata = _MetadataUnpickler(io.BytesIO(data)).load()
            except pickle.UnpicklingError as error:
                raise CheckpointError(f"{metadata_path} was refused: {error}") from error
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _first_cause(error: BaseException) -> str:
    """The message of the first rank's failure in DCP's exception (which only counts ranks),
    else error's."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        failure = next(iter(failures.values()))  # (exception, stack summary)
        return str(failure[0] if isinstance(failure, tuple) else failure)
    return str(error)


def load_canonical(state: dict[str, Any], model: nn.Module,
                   optimizer: torch.optim.Optimizer | None) -> None:
    """Loads a canonical checkpoint dict into model (wrapped, sharded or plain) and optimizer.

    The canonical optimizer state numbers parameters in the optimizer's order; it is renamed to
    parameter names, the form torch.distributed.checkpoint.state_dict reads on any layout.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_state_dict)

    inner = unwrap(model)
    options = StateDictOptions(full_state_dict=True)
    if optimizer is None or state.get("optimizer") is None:
        set_model_state_dict(model, state["model"], options=options)
        return
    names = {id(p): name for name, p in inner.named_parameters()}
    saved = state["optimizer"]
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError("the checkpoint's optimizer has other parameter groups")
    number_to_name = {}
    for ours, theirs in zip(optimizer.param_groups, saved["param_groups"]):
        if len(ours["params"]) != len(theirs["params"]):
            raise CheckpointError("the checkpoint's optimizer trains other parameters")
        number_to_name.update({n: names[id(p)] for n, p in zip(theirs["params"], ours["params"])})
    by_name: dict[str, Any] = {
        "state": {number_to_name[n]: value for n, value in saved["state"].items()},
        "param_groups": [{**group, "params": [number_to_name[n] for n in group["params"]]}
                         for group in saved["param_groups"]],
    }
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=by_name,
                   options=options)


def _plain(state: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A CPU model and its optimizer for a checkpoint's train state (the converter's holder)."""
    from retro.train.config import TrainConfig
    from retro.train.optim import make_optimizer

    model = KINDS[state["kind"]](RetroConfig.from_saved(state["config"]))
    frozen = set(state.get("frozen") or [])
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    config = TrainConfig(**state["train_args"])
    return model, make_optimizer(model, config, torch.device("cpu"))


def dcp_to_canonical(run: str | Path, checkpoint: Checkpoint | None = None) -> Path:
    """Writes RUN/ckpt.safetensors from a DCP checkpoint of the run (default: the latest), in this
    process alone (the whole model and optimizer state on the CPU). Returns its path."""
    if checkpoint is None:
        found = dcp_checkpoints(run)
        if not found:
            raise CheckpointError(f"{Path(run)} has no complete DCP checkpoint "
                                  f"({Path(run) / DCP_DIR}/step-*/{TRAIN_STATE})")
        checkpoint = found[-1]
    state = read_train_state(checkpoint)
    model, optimizer = _plain(state)
    load_dcp(checkpoint, model, optimizer, no_dist=True)
    return save_checkpoint(run, {**state, "model": model.state_dict(),
                                 "optimizer": optimizer.state_dict()})


def to_canonical(run: str | Path, trust_pickle: bool = False) -> Path:
    """``retro ckpt convert --to canonical``: RUN/ckpt.safetensors from the run's latest DCP
    checkpoint, or, where it has none, from its legacy ckpt.pt (trust_pickle: read with the full
    unpickler)."""
    if dcp_checkpoints(run):
        return dcp_to_canonical(run)
    legacy = Path(run) / LEGACY_CHECKPOINT
    if not legacy.exists():
        raise CheckpointError(f"{Path(run)} has no DCP checkpoint nor a legacy {LEGACY_CHECKPOINT} "
                              "to convert")
    state = load_checkpoint(legacy, trust_pickle=trust_pickle)
    return save_checkpoint(run, {**state, "format_version": FORMAT_VERSION})


def canonical_to_dcp(run: str | Path) -> Path:
    """Writes the DCP checkpoint of the canonical one (in this process alone); returns its
    directory."""
    state = load_checkpoint(run)
    if state.get("optimizer") is None or state.get("train_args") is None:
        raise CheckpointError(f"{checkpoint_path(run)} is a weights-only checkpoint: a DCP "
                              "checkpoint is for resuming training, which needs the optimizer")
    model, optimizer = _plain(state)
    load_canonical(state, model, optimizer)
    return save_dcp(run, model, optimizer, state, no_dist=True)

