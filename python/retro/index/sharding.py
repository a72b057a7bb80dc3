"""The IVF-PQ index as S shards: disjoint id ranges, the same trained quantizers.

A shard is an ordinary :class:`retro.IvfPqIndex` (saved in the index's own atomic, checksummed
file format) holding the vectors whose ids fall in its range ``[id_lo, id_hi]``; every shard has
the coarse and PQ centroids of the index it was split from. A shard directory holds the shard files
``shard-00000.ivfpq`` ... and ``shards.json`` (their order, id ranges and a quantizer fingerprint).

- :func:`split_index` / :func:`save_shards` / :func:`shard_index`: make and write shards.
- :func:`read_manifest` / :func:`load_shards`: read them back, checked against the manifest.

Searching the shards and merging their results: :mod:`retro.index.shard_search`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from retro.files import write_json_atomically
from retro.index.ivf_pq import IvfPqIndex

SHARDS_FILE = "shards.json"
FORMAT = "retro-ivfpq-shards"
VERSION = 1


def shard_file(shard: int) -> str:
    """File name of shard number ``shard`` inside a shard directory."""
    return f"shard-{shard:05d}.ivfpq"


def quantizer_fingerprint(index: IvfPqIndex) -> str:
    """Hex sha256 of what must be equal across shards: metric, d, pq_bits, whether the PQ codes
    residuals, the OPQ rotation (if any) and both centroid sets."""
    if not index.is_trained:
        raise ValueError(f"the index is not trained: {index!r}")
    digest = hashlib.sha256(f"{index.metric} {index.d} {index.pq_bits} {index.by_residual}".encode())
    if index.opq_m:  # indexes without OPQ keep the fingerprints they had before OPQ existed
        digest.update(f" OPQ{index.opq_m}_{index.ivf_d}".encode())
        digest.update(np.ascontiguousarray(index.rotation()).tobytes())
    digest.update(np.ascontiguousarray(index.coarse_centroids()).tobytes())
    digest.update(np.ascontiguousarray(index.pq_centroids()).tobytes())
    return digest.hexdigest()


def _all_ids(index: IvfPqIndex) -> np.ndarray:
    """(ntotal,) int64: every stored id, list by list."""
    parts = [index.list_ids(list_no) for list_no in range(index.nlist)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def id_range(index: IvfPqIndex) -> tuple[int, int] | None:
    """(smallest, largest) stored id, or None for an empty index (reads every id once)."""
    ids = _all_ids(index)
    return (int(ids.min()), int(ids.max())) if len(ids) else None


def equal_count_bounds(index: IvfPqIndex, n_shards: int) -> np.ndarray:
    """(n_shards - 1,) int64 cut points that give shards of about ntotal / n_shards vectors.

    Shard s takes the ids in ``[bounds[s-1], bounds[s])`` (the first from -inf, the last to +inf),
    so a repeated id never straddles two shards; shards can be empty when ntotal < n_shards.
    """
    ids = np.sort(_all_ids(index))
    if len(ids) == 0:
        return np.zeros(n_shards - 1, np.int64)
    cuts = np.arange(1, n_shards) * len(ids) // n_shards
    return ids[np.minimum(cuts, len(ids) - 1)]


def split_index(
    index: IvfPqIndex, n_shards: int, bounds: Sequence[int] | np.ndarray | None = None
) -> list[IvfPqIndex]:
    """Splits a trained index into n_shards indexes with disjoint id ranges and its quantizers.

    Args:
        index: a trained IvfPqIndex (it is not modified).
        n_shards: S >= 1.
        bounds: (S - 1,) non-decreasing int64 cut points: shard s holds the ids in
            ``[bounds[s-1], bounds[s])``, the first from -inf and the last to +inf. Default:
            :func:`equal_count_bounds`.

    Returns:
        S in-memory indexes; list l of shard s holds list l's codes whose ids are in its range, in
        their original order. (:func:`shard_index` holds one shard at a time instead.)
    """
    cuts = _cut_points(index, n_shards, bounds)
    return [_shard(index, cuts, s) for s in range(n_shards)]


def _cut_points(
    index: IvfPqIndex, n_shards: int, bounds: Sequence[int] | np.ndarray | None
) -> np.ndarray:
    """(n_shards - 1,) int64 validated cut points (see :func:`split_index`)."""
    if not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise ValueError(f"n_shards must be a positive integer, got {n_shards!r}")
    if not index.is_trained:
        raise ValueError(f"only a trained index can be split: {index!r}")
    if bounds is None:
        return equal_count_bounds(index, int(n_shards))
    cuts = np.asarray(bounds)
    if cuts.dtype.kind not in "iu" or cuts.shape != (n_shards - 1,):
        raise ValueError(
            f"bounds must be {n_shards - 1} integers (n_shards - 1), got {cuts.dtype} of "
            f"shape {cuts.shape}"
        )
    if np.any(np.diff(cuts.astype(np.int64)) < 0):
        raise ValueError(f"bounds must be non-decreasing, got {cuts.tolist()}")
    return cuts.astype(np.int64)


def _shard(index: IvfPqIndex, cuts: np.ndarray, s: int) -> IvfPqIndex:
    """Shard s of index under cuts: the codes of the ids in [cuts[s-1], cuts[s]), list by list."""
    shard = IvfPqIndex.from_trained(
        index.coarse_centroids(), index.pq_centroids(), metric=index.metric, seed=index.seed,
        by_residual=index.by_residual, rotation=index.rotation(), opq_m=index.opq_m or None,
    )
    for list_no in range(index.nlist):
        ids = index.list_ids(list_no)
        rows = np.searchsorted(cuts, ids, side="right") == s  # the shard of each id
        if rows.any():
            shard.add_encoded(list_no, index.list_codes(list_no)[rows], ids[rows])
    return shard


def save_shards(shards: Sequence[IvfPqIndex], directory: str | os.PathLike) -> Path:
    """Writes shards (validated by :func:`check_shards`) and ``shards.json`` to directory.

    Each shard file is written atomically by :meth:`IvfPqIndex.save`, and the manifest last, so a
    directory with a manifest is complete. Returns the manifest's path.
    """
    fingerprint, _ = check_shards(shards)
    return _write_shards(iter(shards), fingerprint, directory)


def shard_index(
    index: IvfPqIndex,
    n_shards: int,
    directory: str | os.PathLike,
    bounds: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """:func:`split_index` + :func:`save_shards`, holding one shard in memory at a time (index
    itself can be memory-mapped); returns the manifest's path."""
    cuts = _cut_points(index, n_shards, bounds)
    shards = (_shard(index, cuts, s) for s in range(n_shards))
    return _write_shards(shards, quantizer_fingerprint(index), directory)


def _write_shards(
    shards: Iterator[IvfPqIndex], fingerprint: str, directory: str | os.PathLike
) -> Path:
    """Saves each shard as it comes, then ``shards.json`` (last: its presence means complete)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for s, shard in enumerate(shards):
        shard.save(root / shard_file(s))
        entries.append(shard_entry(s, shard))
    return write_shards_manifest(root, entries, shard, fingerprint)


def shard_entry(s: int, shard: IvfPqIndex) -> dict:
    """Shard s's entry in ``shards.json``: its file, vector count and id range (reads its ids)."""
    ids = id_range(shard)
    return {
        "file": shard_file(s),
        "ntotal": int(shard.ntotal),
        "id_lo": None if ids is None else ids[0],
        "id_hi": None if ids is None else ids[1],
    }


def write_shards_manifest(
    directory: str | os.PathLike, entries: Sequence[dict], like: IvfPqIndex, fingerprint: str
) -> Path:
    """Writes ``shards.json`` once every shard file of entries (:func:`shard_entry`, in shard
    order) is saved in directory; like is any of the shards. Returns its path."""
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "d": like.d,
        "nlist": like.nlist,
        "pq_m": like.pq_m,
        "pq_bits": like.pq_bits,
        "metric": like.metric,
        "quantizer_sha256": fingerprint,
        "shards": list(entries),
    }
    path = Path(directory) / SHARDS_FILE
    write_json_atomically(path, manifest)
    return path


def read_manifest(directory: str | os.PathLike) -> dict:
    """The ``shards.json`` of a shard directory, checked for its format and version."""
    path = Path(directory) / SHARDS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a shard directory (see retro.index.sharding)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    return manifest


def load_shards(
    directory: str | os.PathLike,
    which: Sequence[int] | None = None,
    mmap: bool = True,
    check_ids: bool = True,
) -> tuple[list[IvfPqIndex], list[tuple[int, int] | None], dict]:
    """Loads shards ``which`` (default: all) of a shard directory.

    Returns the shards, their id ranges from the manifest, and the manifest. Each shard's
    quantizers and vector count are checked against the manifest, and with check_ids its id range
    too (one read of its ids, 8 bytes a vector: a shard file swapped for another is caught).
    """
    root = Path(directory)
    manifest = read_manifest(root)
    entries = manifest["shards"]
    which = range(len(entries)) if which is None else which
    shards, ranges = [], []
    all_ranges = manifest_ranges(manifest)
    for s in which:
        entry = entries[s]
        shard = IvfPqIndex.load(root / entry["file"], mmap=mmap)
        if quantizer_fingerprint(shard) != manifest["quantizer_sha256"]:
            raise ValueError(f"{root / entry['file']}: quantizers differ from {SHARDS_FILE}'s")
        if shard.ntotal != entry["ntotal"]:
            raise ValueError(
                f"{root / entry['file']} holds {shard.ntotal} vectors, {SHARDS_FILE} says "
                f"{entry['ntotal']}"
            )
        path, expected = root / entry["file"], all_ranges[s]
        if check_ids and (found := id_range(shard)) != expected:
            raise ValueError(f"{path} holds ids {found}, {SHARDS_FILE} says {expected}")
        shards.append(shard)
        ranges.append(expected)
    return shards, ranges, manifest


def check_shards(
    shards: Sequence[IvfPqIndex], id_ranges: Sequence[tuple[int, int] | None] | None = None
) -> tuple[str, list[tuple[int, int] | None]]:
    """Checks that shards are IvfPqIndexes split from one trained index (the same quantizers)
    with disjoint id ranges; returns their quantizer fingerprint and id ranges (each shard's
    (smallest, largest) id or None if empty, read from its ids when not given)."""
    if len(shards) == 0:
        raise ValueError("a ShardedIndex needs at least one shard")
    for s, shard in enumerate(shards):
        if not isinstance(shard, IvfPqIndex):
            raise ValueError(f"shard {s} is a {type(shard).__name__}, not an IvfPqIndex")
    fingerprints = [quantizer_fingerprint(shard) for shard in shards]
    for s, (shard, fingerprint) in enumerate(zip(shards, fingerprints)):
        if fingerprint != fingerprints[0]:
            raise ValueError(
                f"shard {s} ({shard!r}) has other trained quantizers than shard 0 "
                f"({shards[0]!r}): shards must be split from one trained index"
            )
    if id_ranges is None:
        id_ranges = [id_range(shard) for shard in shards]
    if len(id_ranges) != len(shards):
        raise ValueError(f"{len(id_ranges)} id ranges for {len(shards)} shards")
    check_disjoint(id_ranges)
    return fingerprints[0], list(id_ranges)


def check_disjoint(id_ranges: Sequence[tuple[int, int] | None]) -> None:
    """Raises ValueError if two shards' (smallest, largest) id ranges overlap."""
    present = sorted((r[0], r[1], s) for s, r in enumerate(id_ranges) if r is not None)
    for (lo_s, hi, s), (lo, hi_t, t) in zip(present, present[1:]):
        if lo <= hi:
            raise ValueError(
                f"shards {s} and {t} have overlapping id ranges {[lo_s, hi]} and "
                f"{[lo, hi_t]}: shards must hold disjoint id ranges"
            )


def manifest_ranges(manifest: dict) -> list[tuple[int, int] | None]:
    """Each shard's (smallest, largest) id from shards.json, None for an empty shard."""
    entries = manifest["shards"]
    return [None if e["id_lo"] is None else (int(e["id_lo"]), int(e["id_hi"])) for e in entries]
