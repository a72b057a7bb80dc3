"""RUN/log.jsonl: one JSON object per line, ``{"step": n, ...}`` (train: loss, lr, grad_norm,
tokens, tokens_per_s, elapsed_s; validation: val_loss)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from retro.files import atomic_file

LOG = "log.jsonl"


class RunLog:
    """Appends lines to RUN/log.jsonl; resuming at step s first drops the lines of steps > s,
    which a run interrupted after its last checkpoint had written."""

    def __init__(self, run: Path, resume_step: int | None) -> None:
        self.path = Path(run) / LOG
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = read_log(self.path) if resume_step is not None else []
        kept = [entry for entry in kept if entry["step"] <= (resume_step or 0)]
        with atomic_file(self.path) as file:
            file.write("".join(json.dumps(entry) + "\n" for entry in kept).encode("utf-8"))

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a log.jsonl (or of RUN/log.jsonl), in order; [] if there is none."""
    path = Path(path)
    path = path / LOG if path.is_dir() else path
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
