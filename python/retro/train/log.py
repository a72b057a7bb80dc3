"""RUN/log.jsonl: one JSON object per line, ``{"step": n, ...}`` (train: loss, lr, grad_norm,
tokens, tokens_per_s, elapsed_s; validation: val_loss); optionally the same numbers to TensorBoard
(RUN/tensorboard, torch.utils.tensorboard) and Weights & Biases, each off by default and imported
only when asked for."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retro.errors import RetroError
from retro.files import atomic_file

LOG = "log.jsonl"
TENSORBOARD = "tensorboard"  # RUN/tensorboard: the event files


class RunLog:
    """Appends lines to RUN/log.jsonl; resuming at step s first drops the lines of steps > s,
    which a run interrupted after its last checkpoint had written. trackers (see open_trackers)
    get every entry too."""

    def __init__(self, run: Path, resume_step: int | None, trackers: Sequence[Any] = ()) -> None:
        self.path = Path(run) / LOG
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.trackers = list(trackers)
        kept = read_log(self.path) if resume_step is not None else []
        kept = [entry for entry in kept if entry["step"] <= (resume_step or 0)]
        with atomic_file(self.path) as file:
            file.write("".join(json.dumps(entry) + "\n" for entry in kept).encode("utf-8"))

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
        scalars = {key: float(value) for key, value in entry.items()
                   if key != "step" and isinstance(value, (int, float))}
        for tracker in self.trackers:
            tracker.log(scalars, entry["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


class TensorBoard:
    """Scalars to RUN/tensorboard; a resumed run first purges the events after its step."""

    def __init__(self, run: Path, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise RetroError(f"tensorboard logging needs the tensorboard package ({error}): "
                             "pip install tensorboard") from None
        self.writer = SummaryWriter(str(Path(run) / TENSORBOARD), purge_step=resume_step)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """Scalars to a Weights & Biases run (project, name; the run's settings as its config)."""

    def __init__(self, run: Path, project: str, name: str | None,
                 settings: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as error:
            raise RetroError(f"wandb logging needs the wandb package ({error}): "
                             "pip install wandb") from None
        self.run = wandb.init(project=project, name=name or Path(run).name, config=settings,
                              dir=str(run))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(run: Path, config: Any, resume_step: int | None) -> list[Any]:
    """The trackers a TrainConfig asks for: TensorBoard (config.tensorboard) and W&B
    (config.wandb_log or a config.wandb_project)."""
    trackers: list[Any] = []
    if config.tensorboard:
        trackers.append(TensorBoard(run, resume_step))
    if config.wandb_log or config.wandb_project is not None:
        trackers.append(WandB(run, config.wandb_project or "retro", config.wandb_run_name,
                              config.to_dict()))
    return trackers


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a log.jsonl (or of RUN/log.jsonl), in order; [] if there is none."""
    path = Path(path)
    path = path / LOG if path.is_dir() else path
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
