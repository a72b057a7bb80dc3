"""manifest.json: what a database directory holds, how it was built and which stages are complete.

Layout (JSON, keys sorted):

- ``format_version``: readers refuse a manifest newer than :data:`FORMAT_VERSION`.
- ``kind``: ``"retro-database"`` or ``"retro-query-set"`` (the output of ``retro db query``).
- ``config``: the build's parameters as asked (corpus, tokenizer, chunk size, block size, ...);
  a resumed build must ask for the same.
- ``components``: what they resolved to: ``tokenizer`` (name, sha256, eod id, vocabulary size),
  ``embedder`` (name, dim, precision), ``index`` (spec, nprobe, k_factor).
- ``counts``: documents, tokens, chunks, samples and query chunks.
- ``files``: ``{relative path: {"bytes": n, "sha256": hex}}`` for every complete data file.
- ``stages``: ``{name: {"inputs": {what: sha256}, "outputs": [paths], "seconds": s, "rows": n}}``
  for every complete stage; an embedding stage of a build that reused another database's
  embeddings adds ``"reused_from": dir, "rows_reused": n`` (rows taken, not embedded, in that run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retro.errors import RetroError
from retro.files import sha256_of, write_json_atomically

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "retro-database"
QUERY_SET = "retro-query-set"


class DatabaseError(RetroError):
    """A database directory that cannot be used as asked; the message says what and why."""


@dataclass
class Manifest:
    """The parsed manifest of the directory root (see the module docstring for the layout)."""

    root: Path
    kind: str
    config: dict[str, Any]
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "config": self.config,
            "components": self.components,
            "counts": self.counts,
            "files": self.files,
            "stages": self.stages,
        }

    def save(self) -> None:
        """Writes manifest.json atomically."""
        write_json_atomically(self.path, self.to_json())

    def record_file(self, relative: str) -> str:
        """Checksums a complete file and records it; returns its sha256."""
        path = self.root / relative
        checksum = sha256_of(path)
        self.files[relative] = {"bytes": path.stat().st_size, "sha256": checksum}
        return checksum

    def file_is_valid(self, relative: str) -> bool:
        """The file exists with the recorded size and checksum."""
        entry = self.files.get(relative)
        path = self.root / relative
        if entry is None or not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        return sha256_of(path) == entry["sha256"]

    def check_file(self, relative: str, hash: bool = True) -> None:
        """Raises DatabaseError naming the file and the expected value unless it exists with the
        recorded size (and, with hash, sha256)."""
        entry = self.files[relative]
        path = self.root / relative
        if not path.is_file():
            raise DatabaseError(f"{path} is missing (the manifest records {entry['bytes']} bytes)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DatabaseError(f"{path} has {size} bytes, the manifest expects {entry['bytes']} "
                                "(truncated or replaced since the build)")
        if hash and (checksum := sha256_of(path)) != entry["sha256"]:
            raise DatabaseError(f"{path} has sha256 {checksum}, the manifest expects "
                                f"{entry['sha256']} (changed since the build)")

    def require_stage(self, stage: str) -> None:
        """Raises DatabaseError unless the stage is complete."""
        if stage not in self.stages:
            raise DatabaseError(
                f"{self.root}: the {stage!r} stage is not complete; finish the build with "
                "`retro db build` (it resumes where it stopped)"
            )

    @classmethod
    def load(cls, root: Path, kind: str | None = None) -> Manifest:
        """Reads root/manifest.json; refuses a newer format or another kind of directory."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise DatabaseError(f"{root}: no {MANIFEST}; not a retro database directory")
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatabaseError(f"{path}: unreadable manifest ({error})") from None
        version = value.get("format_version")
        if not isinstance(version, int):
            raise DatabaseError(f"{path}: no format_version; not a retro manifest")
        if version > FORMAT_VERSION:
            raise DatabaseError(
                f"{path}: database format {version} is newer than this retro reads "
                f"({FORMAT_VERSION}); upgrade retro"
            )
        if kind is not None and value.get("kind") != kind:
            raise DatabaseError(f"{root}: a {value.get('kind')!r} directory, not a {kind!r}")
        return cls(
            root=root,
            kind=value["kind"],
            config=value["config"],
            components=value.get("components", {}),
            counts=value.get("counts", {}),
            files=value.get("files", {}),
            stages=value.get("stages", {}),
            format_version=version,
        )


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """One line per parameter whose requested value differs from the stored one."""
    lines = []
    for key in sorted(set(stored) | set(requested)):
        if stored.get(key) != requested.get(key):
            lines.append(f"{key}: built with {stored.get(key)!r}, asked for {requested.get(key)!r}")
    return lines


def open_or_create(root: Path, kind: str, config: dict[str, Any]) -> Manifest:
    """root's manifest if it has one (refusing another kind or other parameters), else a new one.

    A new manifest is not saved; a directory that exists, is not empty and has no manifest is
    refused, so nothing that is not ours gets overwritten.
    """
    root = Path(root)
    if (root / MANIFEST).exists():
        manifest = Manifest.load(root, kind)
        differences = config_differences(manifest.config, config)
        if differences:
            raise DatabaseError(
                f"{root} was built with other parameters; resume with the same ones or write "
                "somewhere else. Differences:\n  " + "\n  ".join(differences)
            )
        return manifest
    if root.exists() and any(root.iterdir()):
        raise DatabaseError(f"{root} exists, is not empty and holds no {MANIFEST}; refusing to write")
    return Manifest(root=root, kind=kind, config=config)
