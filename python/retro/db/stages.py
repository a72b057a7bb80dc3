"""The build stages and the runner that skips complete ones and records finished ones.

A stage is complete when the manifest lists it with the same inputs (checksums of the files and
parameters it is computed from) and every output file still has its recorded checksum. The runner
redoes any other stage; since every stage is deterministic, a redone stage whose inputs did not
change writes the same bytes, and the stages after it stay complete.

On several ranks (``torchrun -m retro db build``; retro.world) every rank runs the same
sequence of stages: rank 0 decides which are complete, runs "chunks" alone and records every
finished stage in the manifest; the others run on every rank. "tokenize" is split by document
range (rank 0 joins the parts); "index" is trained by rank 0 and encoded by block range, each rank
writing its shards (index_build.py); embed, queries.<split> and neighbours.<split> are split by
block range, each rank writing its own blocks into the shared files (retro.db.blocks.BlockWriter).
With an index of at least as many shards as ranks, the neighbour blocks are searched by all ranks
together, each rank its own shards (retro.index.shard_search.DistributedIndex), and written by the
rank whose range holds them. Blocks hold the same bytes whoever computes them, so the files are those
of a one-process build, and a rerun on any number of ranks skips the blocks that were written.

For tests, the environment variable ``RETRO_DB_FAIL_AT`` makes the build raise
:class:`InjectedFailure` at a named point (or at any of several, separated by commas):
``<stage>`` once its outputs are written but before the manifest records them, ``<stage>:<b>``
once block b of a blocked stage (embed, index, queries.<split>, neighbours.<split>) is stored (by
whichever rank writes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retro.data.tokenizer import Tokenizer
from retro.db.blocks import BlockWriter
from retro.db.chunks import CHUNK_FILES, ChunkStore, write_chunks
from retro.db.embed import Embedder, KnownEmbeddings, embed_to_file
from retro.db.index_build import build_index
from retro.db.indexing import IndexParams, open_distributed_searcher, open_searcher
from retro.db.manifest import DatabaseError, Manifest
from retro.db.retrieval import doc_ranges_to_ids, retrieve_embedded
from retro.db.streams import (
    TokenStream, read_parts, remove_parts, stream_files, write_part, write_stream,
)
from retro.errors import RetroError
from retro.files import save_npy_atomically
from retro.world import World, barrier, broadcast_object, gather_objects, rank_range

FAIL_AT = "RETRO_DB_FAIL_AT"
EMBEDDINGS_FILE = "embeddings.npy"
TOKENIZE_BATCH = 1024  # documents per encode_batch call (one progress step)


STAGE_ORDER = ("tokenize", "chunks", "embed", "index", "queries", "neighbours")


def stage_order(name: str) -> tuple[int, str]:
    """Sort key putting stages in build order ("queries.train" with "queries")."""
    return STAGE_ORDER.index(name.split(".")[0]), name


class InjectedFailure(RuntimeError):
    """Raised where RETRO_DB_FAIL_AT names the current point (tests of resumption)."""


def fail_point(name: str) -> None:
    """Raises InjectedFailure if name is one of the comma-separated points of RETRO_DB_FAIL_AT."""
    if name in os.environ.get(FAIL_AT, "").split(","):
        raise InjectedFailure(f"injected failure at {name!r} ({FAIL_AT})")


def query_files(split: str) -> dict[str, str]:
    return {
        "embeddings": f"queries/{split}/embeddings.npy",
        "sample_docs": f"queries/{split}/sample_docs.npy",
    }


def neighbour_files(split: str) -> dict[str, str]:
    return {"ids": f"neighbours/{split}/ids.npy", "lengths": f"neighbours/{split}/lengths.npy"}


@dataclass
class StageRunner:
    """Runs stages against a manifest; see the module docstring."""

    manifest: Manifest
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    world: World = World()  # the ranks building together; rank 0 alone writes the manifest

    @property
    def root(self) -> Path:
        return self.manifest.root

    def checksums(self, paths: Sequence[str]) -> dict[str, str]:
        return checksums(self.manifest, paths)

    def is_complete(self, name: str, inputs: dict[str, str]) -> bool:
        record = self.manifest.stages.get(name)
        return (
            record is not None
            and record["inputs"] == inputs
            and all(self.manifest.file_is_valid(path) for path in record["outputs"])
        )

    def run(
        self,
        name: str,
        inputs: dict[str, str],
        work: Callable[[], tuple[list[str], int]],
        blocked: bool = False,
        details: dict | None = None,
    ) -> None:
        """Runs work() -> (output paths, rows processed) unless the stage is complete; details,
        which work() may fill, are recorded with the stage (informational).

        Collective on several ranks: work() runs on every rank if blocked (each does its blocks),
        else on rank 0 alone; rank 0 then records the stage and every rank gets its manifest.
        """
        main = self.world.is_main
        if broadcast_object(self.is_complete(name, inputs) if main else None, self.world):
            if main:
                self.log(f"{name}: complete, skipped")
            return
        self.manifest.stages.pop(name, None)
        start = time.perf_counter()
        outputs, rows = work() if blocked or main else ([], 0)
        seconds = time.perf_counter() - start
        fail_point(name)
        if main:
            for path in outputs:
                self.manifest.record_file(path)
            self.manifest.stages[name] = {
                "inputs": inputs,
                "outputs": outputs,
                "rows": rows,
                "seconds": round(seconds, 3),
                **(details or {}),
            }
            self.manifest.save()
        self.sync()

    def sync(self) -> None:
        """Every rank's manifest becomes rank 0's (what it recorded and resolved)."""
        if self.world.distributed:
            state = broadcast_object(self.manifest.to_json() if self.world.is_main else None,
                                     self.world)
            for key in ("components", "counts", "files", "stages"):
                setattr(self.manifest, key, state[key])

    @contextmanager
    def bar(
        self, name: str, total: int, unit: str, shared: bool = True
    ) -> Iterator[Callable[[int], None]]:
        """A progress bar with a rate in units/s; yields its update function. On several ranks
        rank 0 shows its own share (about total / ranks) of work shared out by range, or all of
        it if not shared."""
        from tqdm.auto import tqdm

        total = -(-total // self.world.size) if shared else total
        shown = self.progress and self.world.is_main
        with tqdm(total=total, desc=name, unit=unit, disable=not shown, smoothing=0.1) as bar:
            yield bar.update


def split_documents(n_docs: int, valid_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded split by document: {"train": ids, "valid": ids} (sorted int64; no "valid" at 0)."""
    n_valid = 0 if valid_fraction == 0 else max(1, round(valid_fraction * n_docs))
    if n_docs - n_valid < 1:
        raise RetroError(
            f"{n_docs} document(s) leave none for training with valid_fraction={valid_fraction}"
        )
    valid = np.sort(np.random.default_rng(seed).permutation(n_docs)[:n_valid])
    splits = {"train": np.setdiff1d(np.arange(n_docs), valid)}
    if n_valid:
        splits["valid"] = valid
    return splits


def tokenize(
    runner: StageRunner,
    documents: Sequence[str],
    fingerprint: str,
    splits: dict[str, np.ndarray],
    tokenizer: Tokenizer,
    block_size: int,
    align: int = 1,
) -> None:
    """Stage "tokenize": every split's documents -> its token stream (see streams.py), each
    document padded to a multiple of align tokens."""

    world = runner.world

    def work() -> tuple[list[str], int]:
        # Each rank tokenizes its range of the documents (a document's tokens depend on its text
        # alone) and saves them as its part.
        mine = rank_range(len(documents), world)
        encoded: list[np.ndarray] = []
        with runner.bar("tokenize", len(documents), "doc") as update:
            for start in range(mine.start, mine.stop, TOKENIZE_BATCH):
                batch = documents[start : min(mine.stop, start + TOKENIZE_BATCH)]
                encoded.extend(tokenizer.encode_batch(batch))
                update(len(batch))
        if world.distributed:
            write_part(runner.root, world.rank, encoded, tokenizer.token_dtype)
            barrier(world)
            encoded = read_parts(runner.root, world.size)
            barrier(world)  # every rank has opened the parts before rank 0 removes them
        for split, doc_index in splits.items():  # on every rank: each raises, none waits
            n_tokens = sum(len(encoded[i]) + 1 for i in doc_index)
            if n_tokens <= block_size:
                raise DatabaseError(
                    f"the {split} split has {n_tokens} tokens, too few for one sample of "
                    f"block_size + 1 = {block_size + 1}: lower the block size or give more text"
                )
        if not world.is_main:
            return [], 0
        outputs = []
        for split, doc_index in splits.items():
            docs = [encoded[i] for i in doc_index]
            outputs += write_stream(
                runner.root, split, docs, doc_index, tokenizer.eod_id, tokenizer.token_dtype,
                align,
            )
        if world.distributed:
            remove_parts(runner.root)
        return outputs, sum(map(len, encoded))

    inputs = {"corpus": fingerprint, "tokenizer": tokenizer.sha256, "splits": _digest(splits)}
    if align != 1:  # recorded only when set, so that earlier builds' records stay valid
        inputs["align"] = str(align)
    runner.run("tokenize", inputs, work, blocked=True)


def chunk(runner: StageRunner, tokenizer: Tokenizer, chunk_size: int, block_size: int,
          splits: Sequence[str] = ("train",)) -> None:
    """Stage "chunks": the documents of splits (the train split, and the valid one for a database
    with knowledge of it), in that order -> the chunk store (see chunks.py)."""

    def work() -> tuple[list[str], int]:
        streams = [TokenStream.open(runner.root, split, block_size, chunk_size) for split in splits]
        outputs = write_chunks(runner.root, streams, tokenizer.eod_id)
        return outputs, len(np.load(runner.root / CHUNK_FILES["lengths"], mmap_mode="r"))

    inputs = runner.checksums([path for split in splits for path in stream_files(split).values()])
    runner.run("chunks", {**inputs, "chunk_size": str(chunk_size)}, work)


def embed_chunks(
    runner: StageRunner,
    tokenizer: Tokenizer,
    embedder: Callable[[], Embedder],
    block: int,
    source: Callable[[], KnownEmbeddings] | None = None,
) -> None:
    """Stage "embed": each chunk's text -> embeddings.npy (N, dim) float16; with a source, the
    chunks it holds are taken from it (retro.db.reuse)."""
    inputs = {
        **runner.checksums([CHUNK_FILES["tokens"], CHUNK_FILES["lengths"]]),
        "embedder": _embedder_key(runner.manifest),
        "block": str(block),
    }
    details: dict = {}

    def work() -> tuple[list[str], int]:
        # A chunk's row is eod after its length: its text is that of tokens[:length].
        tokens = ChunkStore.open(runner.root, tokenizer.eod_id).tokens
        _embed_rows(runner, "embed", tokenizer, embedder, source, details,
                    runner.root / EMBEDDINGS_FILE, len(tokens),
                    lambda start, stop: np.asarray(tokens[start:stop]),
                    json.dumps(inputs, sort_keys=True), block)
        return [EMBEDDINGS_FILE], len(tokens)

    runner.run("embed", inputs, work, blocked=True, details=details)


def _embed_rows(
    runner: StageRunner,
    name: str,
    tokenizer: Tokenizer,
    embedder: Callable[[], Embedder],
    source: Callable[[], KnownEmbeddings] | None,
    details: dict,
    path: Path,
    n_rows: int,
    rows: Callable[[int, int], np.ndarray],
    key: str,
    block: int,
) -> None:
    """Embeds the rows of stage name into path (embed_to_file) with a progress bar; with a source,
    logs how many rows were reused and records it in details."""
    reusing = source() if source else None
    with runner.bar(name, n_rows, "chunk") as update:
        reused, embedded = embed_to_file(
            embedder(), path, n_rows, rows, tokenizer.texts_without_eod, key, block, update,
            lambda b: fail_point(f"{name}:{b}"), runner.world, reusing,
        )
    if reusing is not None:
        reused, embedded = map(sum, zip(*gather_objects((reused, embedded), runner.world)))
        details["reused_from"] = str(reusing.root)
        details["rows_reused"] = reused
        if runner.world.is_main:
            runner.log(f"{name}: {reused} rows reused from {reusing.root}, {embedded} embedded")


def index(runner: StageRunner, params: IndexParams, seed: int) -> None:
    """Stage "index": IVF-PQ trained on a sample of the embeddings, every chunk added, as one file
    or params.shards shards (nothing for Flat); the ranks encode by block range (index_build.py)."""
    inputs = {
        **runner.checksums([EMBEDDINGS_FILE]),
        "index": json.dumps(params.to_json(), sort_keys=True),
        "seed": str(seed),
    }

    def work() -> tuple[list[str], int]:
        embeddings = np.load(runner.root / EMBEDDINGS_FILE, mmap_mode="r")
        if params.is_flat:
            return [], len(embeddings)
        with runner.bar("index", len(embeddings), "chunk") as update:
            outputs = build_index(
                runner.root, params, embeddings, seed, json.dumps(inputs, sort_keys=True),
                runner.world, update, lambda b: fail_point(f"index:{b}"),
            )
        return outputs, len(embeddings)

    runner.run("index", inputs, work, blocked=True)


def embed_queries(
    runner: StageRunner,
    split: str,
    tokenizer: Tokenizer,
    embedder: Callable[[], Embedder],
    chunk_size: int,
    block_size: int,
    block: int,
    source: Callable[[], KnownEmbeddings] | None = None,
) -> None:
    """Stage "queries.<split>": the split's query chunks -> embeddings (with a source, those it
    holds taken from it: retro.db.reuse); samples -> documents."""
    name = f"queries.{split}"
    inputs = {
        **runner.checksums(list(stream_files(split).values())),
        "embedder": _embedder_key(runner.manifest),
        "block": str(block),
        "block_size": str(block_size),
        "chunk_size": str(chunk_size),
    }
    files = query_files(split)
    details: dict = {}

    def work() -> tuple[list[str], int]:
        stream = TokenStream.open(runner.root, split, block_size, chunk_size)
        if runner.world.is_main:
            save_npy_atomically(runner.root / files["sample_docs"], stream.sample_doc_ranges())

        _embed_rows(runner, name, tokenizer, embedder, source, details,
                    runner.root / files["embeddings"], stream.n_queries, stream.query_tokens,
                    json.dumps(inputs, sort_keys=True), block)
        return list(files.values()), stream.n_queries

    runner.run(name, inputs, work, blocked=True, details=details)


def find_neighbours(
    runner: StageRunner,
    split: str,
    db: Manifest,
    in_database: bool,
    n_nbrs: int,
    chunk_size: int,
    block_size: int,
    block: int,
) -> None:
    """Stage "neighbours.<split>": top n_nbrs chunks of db per query chunk of the split.

    in_database: the split's documents are the database's (the train split), so each query
    excludes every chunk of every document of its sample.

    On W ranks with an index of S >= W shards the ranks search every block together, each its
    own shards (retro.index.shard_search.DistributedIndex), and the rank whose range holds a block
    writes it; otherwise each rank searches its own blocks in the whole index.
    """
    name = f"neighbours.{split}"
    params = IndexParams(**db.components["index"])
    db_files = [EMBEDDINGS_FILE, CHUNK_FILES["doc_ids"], CHUNK_FILES["lengths"], *params.files]
    inputs = {
        **{f"db:{path}": checksum for path, checksum in checksums(db, db_files).items()},
        **runner.checksums(list(query_files(split).values())),
        "index": json.dumps(params.to_json(), sort_keys=True),
        "n_nbrs": str(n_nbrs),
        "exclude_sample_docs": str(in_database),
        "block": str(block),
    }
    files = neighbour_files(split)

    world = runner.world
    together = world.size > 1 and not params.is_flat and params.shards >= world.size

    def work() -> tuple[list[str], int]:
        chunks = ChunkStore.open(db.root, db.components["tokenizer"]["eod_id"])
        embeddings = np.load(db.root / EMBEDDINGS_FILE, mmap_mode="r")
        opener = open_distributed_searcher if together else open_searcher
        search = opener(db.root, params, embeddings)
        queries = np.load(runner.root / query_files(split)["embeddings"], mmap_mode="r")
        sample_docs = np.load(runner.root / query_files(split)["sample_docs"])
        chunks_per_sample = block_size // chunk_size
        paths = {key: runner.root / path for key, path in files.items()}
        writer = BlockWriter(
            {
                paths["ids"]: ((len(queries), n_nbrs), np.dtype(np.int64)),
                paths["lengths"]: ((len(queries), n_nbrs), np.dtype(np.int32)),
            },
            block,
            json.dumps(inputs, sort_keys=True),
            runner.world,
        )
        with runner.bar(name, len(queries), "chunk", shared=not together) as update:
            update(writer.rows_of(writer.done) if together else writer.rows_done)
            for b, start, stop in writer.pending(every_rank=together):
                samples = np.arange(start, stop) // chunks_per_sample
                exclude = doc_ranges_to_ids(sample_docs[samples]) if in_database else None
                x = np.asarray(queries[start:stop], dtype=np.float32)
                # Searched together, every rank gets the same results, so the exclusion loop
                # (retrieval.search_excluding) makes the same collective calls on every rank.
                found = retrieve_embedded(search, chunks, x, n_nbrs, exclude)
                update(stop - start)
                if writer.is_mine(b):
                    writer.write(b, {paths["ids"]: found.ids, paths["lengths"]: found.lengths})
                    fail_point(f"{name}:{b}")
        writer.finish()
        return list(files.values()), len(queries)

    runner.run(name, inputs, work, blocked=True)


def checksums(manifest: Manifest, paths: Sequence[str]) -> dict[str, str]:
    """The recorded sha256 of complete files (the inputs of a later stage)."""
    return {path: manifest.files[path]["sha256"] for path in paths}


def _embedder_key(manifest: Manifest) -> str:
    embedder = manifest.components["embedder"]
    return f"{embedder['name']}|{embedder['precision']}"


def _digest(splits: dict[str, np.ndarray]) -> str:
    """sha256 of each split's document ids."""
    return json.dumps(
        {split: hashlib.sha256(ids.astype(np.int64).tobytes()).hexdigest() for split, ids in splits.items()},
        sort_keys=True,
    )
