"""What every benchmark writes: its result JSON, with the provenance of the run (bench/provenance.py)
under "provenance", written atomically. The tables in docs/ are rendered from these JSONs by
bench/render.py.

    report.write_result(report.RESULTS_DIR / "x.json", {"rows": rows}, threads=2)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import provenance

ROOT = provenance.ROOT
RESULTS_DIR = ROOT / "bench" / "results"


def with_provenance(payload: dict, threads: int | None, load_before: list[float] | None = None) -> dict:
    """payload with the provenance of the run made now (provenance.capture's arguments)."""
    return {**payload, "provenance": provenance.capture(threads, load_before)}


def write_json(path: Path, record: dict) -> None:
    """Writes record to path atomically: a cut run leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(json.dumps(record, indent=1, default=_plain) + "\n")
    os.chmod(file.name, 0o644)  # as a plain write would leave it, not the temporary file's 0600
    os.replace(file.name, path)


def _plain(value: object) -> object:
    """What json cannot write itself: numpy scalars as numbers, anything else (paths) as text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def write_result(path: Path, payload: dict, threads: int | None, load_before: list[float] | None = None) -> dict:
    """Writes payload and its provenance to path (see with_provenance); returns what was written."""
    record = with_provenance(payload, threads, load_before)
    write_json(path, record)
    return record
