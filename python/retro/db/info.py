"""What ``retro db info`` and ``retro db show`` print: counts, timings, sizes, recall, neighbours."""

from __future__ import annotations

import numpy as np

from retro.db.database import Database
from retro.db.indexing import exact_searcher
from retro.db.manifest import Manifest
from retro.db.retrieval import doc_ranges_to_ids, search_excluding
from retro.db.stages import stage_order
from retro.errors import RetroError

RECALL_SAMPLE = 500


def neighbour_recall(db: Database, split: str, sample: int = RECALL_SAMPLE, seed: int = 0) -> float:
    """recall@k of the stored neighbours of a seeded sample of the split's query chunks.

    The truth is exact search over the float16 embeddings with the same exclusions (for "train",
    every chunk of every document of the query's sample); recall is the share of the exact
    neighbours found among the stored ones.
    """
    view = db.split(split)
    ids, _ = view.neighbours()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(ids), size=min(sample, len(ids)), replace=False))
    queries = np.asarray(view.query_embeddings[rows], dtype=np.float32)
    exclude = doc_ranges_to_ids(view.sample_docs[view.sample_of_query()[rows]]) if split == "train" else None
    _, exact = search_excluding(exact_searcher(db.embeddings), queries, db.n_nbrs, db.doc_ids, exclude)
    stored = np.asarray(ids[rows])
    hits = sum(len(set(a[a >= 0]) & set(b[b >= 0])) for a, b in zip(stored, exact))
    return hits / max(1, int((exact >= 0).sum()))


def stage_table(manifest: Manifest) -> list[str]:
    """One line per stage: rows, seconds, rows/s and share of the total time."""
    total = sum(stage["seconds"] for stage in manifest.stages.values()) or 1.0
    lines = [f"{'stage':<20} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'share':>6}"]
    for name in sorted(manifest.stages, key=stage_order):
        stage = manifest.stages[name]
        rate = stage["rows"] / stage["seconds"] if stage["seconds"] else float("inf")
        lines.append(
            f"{name:<20} {stage['rows']:>10} {stage['seconds']:>9.2f} {rate:>10.0f} "
            f"{stage['seconds'] / total:>6.1%}"
        )
    lines.append(f"{'total':<20} {'':>10} {total:>9.2f}")
    return lines


def size_lines(manifest: Manifest) -> list[str]:
    """Bytes per file and in all."""
    lines = [f"{path:<36} {entry['bytes'] / 2**20:>9.2f} MiB" for path, entry in sorted(manifest.files.items())]
    total = sum(entry["bytes"] for entry in manifest.files.values())
    return lines + [f"{'total':<36} {total / 2**20:>9.2f} MiB"]


def summary(manifest: Manifest) -> str:
    """Counts, parameters, stage timings and sizes, as printed after a build."""
    components = manifest.components
    lines = [f"{manifest.root} ({manifest.kind}, format {manifest.format_version})"]
    lines += [f"  {key}: {value}" for key, value in sorted(manifest.counts.items())]
    lines.append(f"  tokenizer: {components['tokenizer']['name']} (eod {components['tokenizer']['eod_id']})")
    embedder = components["embedder"]
    lines.append(f"  embedder: {embedder['name']} ({embedder.get('dim')}-d, {embedder['precision']})")
    if "index" in components:
        index = components["index"]
        shards = f" as {index['shards']} shards" if index.get("shards", 1) > 1 else ""
        lines.append(f"  index: {index['spec']}{shards} nprobe={index['nprobe']} "
                     f"k_factor={index['k_factor']}")
    for key in ("block_size", "chunk_size", "n_nbrs", "valid_fraction", "seed"):
        if key in manifest.config:
            lines.append(f"  {key}: {manifest.config[key]}")
    return "\n".join([*lines, "", *stage_table(manifest), "", *size_lines(manifest)])


def show_query(db: Database, split: str, query: int) -> str:
    """A query chunk's text and its stored neighbours' texts (chunk | continuation)."""
    view = db.split(split)
    ids, lengths = view.neighbours()
    if not 0 <= query < len(ids):
        raise RetroError(f"query {query} out of range: the {split} split has {len(ids)} query chunks")
    sample = int(view.sample_of_query()[query])
    docs = view.sample_doc_ids(sample)
    text = db.tokenizer.texts_without_eod([view.stream.query_tokens(query, query + 1)[0]])[0]
    lines = [
        f"query {query} of {split}: sample {sample}, chunk {query % view.stream.chunks_per_sample}, "
        f"documents {docs[0]}..{docs[-1]}",
        _indent(text),
    ]
    for rank, (chunk, length) in enumerate(zip(ids[query], lengths[query]), start=1):
        if chunk < 0:
            lines.append(f"neighbour {rank}: none")
            continue
        continuation = db.chunks.continuation(np.array([chunk]))[0]
        lines.append(
            f"neighbour {rank}: chunk {chunk} of document {db.doc_ids[chunk]}, {length} tokens"
            + ("" if continuation >= 0 else " (no continuation: the document ends)")
        )
        lines.append(_indent(db.chunk_text(int(chunk))))
        if continuation >= 0:
            lines.append(_indent("| " + db.chunk_text(int(continuation))))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines() or [""])
