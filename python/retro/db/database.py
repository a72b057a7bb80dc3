"""``open_db``: a built retrieval database, read through memory maps.

Directory layout (every data file is .npy; shapes with N chunks, m = chunk size, T = block size,
k = neighbours, d = embedding dimension)::

    manifest.json                      see manifest.py
    tokens/<split>/stream.npy          (n_tokens,) uint16|int32  documents, each followed by eod
    tokens/<split>/doc_offsets.npy     (n_docs + 1,) int64      document i = stream[o[i]:o[i+1]]
    tokens/<split>/doc_index.npy       (n_docs,) int64          position in the corpus as read
    chunks/tokens.npy                  (N, m) uint16|int32      train documents only, eod-padded
    chunks/lengths.npy                 (N,) int32
    chunks/doc_ids.npy                 (N,) int64               train document of each chunk
    chunks/doc_offsets.npy             (n_train_docs + 1,) int64
    embeddings.npy                     (N, d) float16           unit norm
    index.ivfpq                        retro IVF-PQ index (absent for Flat and sharded indexes)
    index.shards/shard-<s>.ivfpq       with index_shards S > 1 instead: shard s, chunk ids
                                       [s * N // S, (s + 1) * N // S) (retro.index.sharding)
    index.shards/shards.json           the shards' ranges and quantizer checksum
    queries/<split>/embeddings.npy     (n_queries, d) float16   query q = stream[q*m:(q+1)*m]
    queries/<split>/sample_docs.npy    (n_samples, 2) int64     documents [first, last) of sample j
    neighbours/<split>/ids.npy         (n_queries, k) int64     -1 = none
    neighbours/<split>/lengths.npy     (n_queries, k) int32     tokens of chunk + continuation
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from retro.data.corpus import canonical_source
from retro.data.tokenizer import Tokenizer, load_tokenizer
from retro._arrays import as_count
from retro.db.chunks import CHUNK_FILES, ChunkStore
from retro.db.embed import Embedder, resolve_name
from retro.db.indexing import IndexParams, Searcher, open_searcher
from retro.db.manifest import DATABASE, DatabaseError, Manifest
from retro.db.retrieval import Neighbours, padded_doc_ids, retrieve_embedded
from retro.db.stages import EMBEDDINGS_FILE, neighbour_files, query_files
from retro.db.streams import TokenStream


# Files up to this size are hashed when the database opens; larger ones when first read.
EAGER_HASH_BYTES = 64 << 20


class SplitView:
    """One split of token streams with its query embeddings and stored neighbours."""

    def __init__(self, root: Path, split: str, block_size: int, chunk_size: int,
                 check: Callable[[str], None] = lambda relative: None) -> None:
        self.name = split
        self.stream = TokenStream.open(root, split, block_size, chunk_size)
        self._root = root
        self._check = check  # verifies a file before its first read (Database.check_file)

    @cached_property
    def query_embeddings(self) -> np.ndarray:
        """(n_queries, d) float16."""
        return np.load(self._root / query_files(self.name)["embeddings"], mmap_mode="r")

    @cached_property
    def sample_docs(self) -> np.ndarray:
        """(n_samples, 2) int64: the documents [first, last) of each sample."""
        return np.load(self._root / query_files(self.name)["sample_docs"], mmap_mode="r")

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """ids (n_queries, k) int64 (-1 = none) and lengths (n_queries, k) int32 (0 = none)."""
        files = neighbour_files(self.name)
        for key in ("ids", "lengths"):
            self._check(files[key])
        return tuple(np.load(self._root / files[key], mmap_mode="r") for key in ("ids", "lengths"))

    def sample_neighbours(self, samples: Sequence[int] | np.ndarray, chunks: ChunkStore,
                          k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The stored neighbours of samples, as a model reads them: tokens (S, L, k, 2m) int64
        (each neighbour chunk then its continuation, eod-padded) and the stored lengths (S, L, k)
        int32 (0 = none); k: the first k neighbours (default all). The one read path of
        training and evaluation."""
        samples = np.asarray(samples, dtype=np.int64)
        per_sample = self.stream.chunks_per_sample
        queries = (samples[:, None] * per_sample + np.arange(per_sample)).reshape(-1)  # (S L,)
        ids, lengths = self.neighbours()
        ids, lengths = np.asarray(ids[queries, :k]), np.asarray(lengths[queries, :k])
        bad = (ids < -1) | (ids >= len(chunks))
        if bad.any():
            raise DatabaseError(
                f"{self._root / neighbour_files(self.name)['ids']} is corrupt: neighbour id "
                f"{ids[bad][0]} is outside [-1, {len(chunks)}) (-1 = none)")
        tokens = chunks.neighbour_tokens(ids)
        shape = (len(samples), per_sample)
        return tokens.reshape(*shape, *tokens.shape[1:]), lengths.reshape(*shape, -1)

    def sample_of_query(self) -> np.ndarray:
        """(n_queries,) int64: the sample of each query chunk."""
        return self.stream.sample_of_query()

    def sample_doc_ids(self, j: int) -> np.ndarray:
        """(n,) int64: the documents with a token in sample j (ids within this split)."""
        first, last = self.sample_docs[j]
        return np.arange(first, last, dtype=np.int64)


class Database:
    """A retrieval database directory (see the module docstring); open it with :func:`open_db`."""

    def __init__(self, root: Path, manifest: Manifest, verify: bool = True) -> None:
        self.root = root
        self.manifest = manifest
        # Every file's size now; the sha256 of the small ones now, of the others at first read
        # (verify=False: sizes only).
        self._unhashed = set()
        for relative, entry in manifest.files.items():
            eager = verify and entry["bytes"] <= EAGER_HASH_BYTES
            manifest.check_file(relative, hash=eager)
            if verify and not eager:
                self._unhashed.add(relative)
        for relative in CHUNK_FILES.values():
            self.check_file(relative)
        self.chunks = ChunkStore.open(root, self.eod_id)

    def check_file(self, relative: str) -> None:
        """Hashes a large file against the manifest before its first read (once)."""
        if relative in self._unhashed:
            self.manifest.check_file(relative)
            self._unhashed.discard(relative)

    @property
    def config(self) -> dict:
        return self.manifest.config

    chunk_size = property(lambda self: int(self.config["chunk_size"]), doc="Tokens per chunk (m).")
    block_size = property(lambda self: int(self.config["block_size"]), doc="Tokens per sample (T).")
    n_nbrs = property(lambda self: int(self.config["n_nbrs"]), doc="Neighbours per query (k).")
    eod_id = property(lambda self: int(self.manifest.components["tokenizer"]["eod_id"]))
    dim = property(lambda self: int(self.manifest.components["embedder"]["dim"]))

    @property
    def splits(self) -> list[str]:
        """The token streams held: "train" and, unless valid_fraction was 0, "valid"."""
        return [s for s in ("train", "valid") if f"neighbours.{s}" in self.manifest.stages]

    def __len__(self) -> int:
        """Chunks in the database."""
        return len(self.chunks)

    @property
    def doc_ids(self) -> np.ndarray:
        """(N,) int64: the train document of every chunk."""
        return self.chunks.doc_ids

    @cached_property
    def embeddings(self) -> np.ndarray:
        """(N, d) float16 unit-norm chunk embeddings."""
        self.check_file(EMBEDDINGS_FILE)
        return np.load(self.root / EMBEDDINGS_FILE, mmap_mode="r")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        tokenizer = load_tokenizer(self.config["tokenizer"])
        if tokenizer.sha256 != self.manifest.components["tokenizer"]["sha256"]:
            raise DatabaseError(f"{self.root}: tokenizer {tokenizer.name} changed since the build")
        return tokenizer

    @cached_property
    def embedder(self) -> Embedder:
        """The embedder the database was built with."""
        info = self.manifest.components["embedder"]
        return self.embedder_for(info["name"], info["precision"])

    def embedder_for(self, name_or_path: str, precision: str | None = None) -> Embedder:
        """An embedder for queries against this database; refuses one of another dimension."""
        embedder = Embedder(name_or_path, precision=precision)
        if embedder.dim != self.dim:
            raise DatabaseError(
                f"embedder {embedder.name} gives {embedder.dim}-d vectors but {self.root} holds "
                f"{self.dim}-d embeddings (built with {self.manifest.components['embedder']['name']})"
            )
        return embedder

    @cached_property
    def index_params(self) -> IndexParams:
        return IndexParams(**self.manifest.components["index"])

    @cached_property
    def search(self) -> Searcher:
        """search(x (n, d) float32, k) -> D (n, k) float32, I (n, k) int64, no exclusion."""
        return open_searcher(self.root, self.index_params, self.embeddings)

    def chunk_tokens(self, i: int) -> np.ndarray:
        """(length,) int64: chunk i's real tokens."""
        return np.asarray(self.chunks.tokens[i, : self.chunks.lengths[i]], dtype=np.int64)

    def chunk_text(self, i: int) -> str:
        return self.tokenizer.decode_batch([self.chunk_tokens(i)])[0]

    def retrieve(
        self,
        tokens: np.ndarray,
        k: int | None = None,
        exclude_doc_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
        embedder: Embedder | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours of query chunks given as tokens.

        Args:
            tokens: (n, m) integer token ids; eod tokens in a row are left out of its text.
            k: neighbours per query (default: the database's n_nbrs).
            exclude_doc_ids: per query, the database documents (chunk doc ids) whose chunks it
                must not retrieve: n sequences, or an (n, E) int array padded with -1.
            embedder: defaults to the database's.

        Returns:
            ids (n, k) int64 (-1 = none), lens (n, k) int32 (0 = none), and nbr_tokens
            (n, k, 2m) int64: each neighbour chunk followed by its continuation, eod-padded.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.chunk_size:
            raise ValueError(f"tokens must have shape (n, {self.chunk_size}), got {tokens.shape}")
        vocab = int(self.manifest.components["tokenizer"]["vocab_size"])
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        bad = (tokens < 0) | (tokens >= vocab)
        if bad.any():
            raise ValueError(f"token {tokens[bad][0]} is not in the tokenizer's vocabulary "
                             f"[0, {vocab})")
        texts = self.tokenizer.texts_without_eod(list(tokens))
        queries = (embedder or self.embedder).embed(texts).astype(np.float32)
        found = self.retrieve_embedded(queries, k, exclude_doc_ids)
        return found.ids, found.lengths, found.tokens

    def retrieve_embedded(
        self,
        queries: np.ndarray,
        k: int | None = None,
        exclude_doc_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> Neighbours:
        """Neighbours of embedded queries (n, d) float32; see :meth:`retrieve`."""
        k = self.n_nbrs if k is None else as_count(k, "k")
        exclude = padded_doc_ids(exclude_doc_ids, len(queries))
        return retrieve_embedded(self.search, self.chunks, queries, k, exclude)

    def split(self, name: str) -> SplitView:
        if name not in self.splits:
            raise DatabaseError(f"no split {name!r} in {self.root}; it holds {self.splits}")
        return SplitView(self.root, name, self.block_size, self.chunk_size, self.check_file)

    def neighbours(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """ids (n_queries, k) int64 (-1 = none), lengths (n_queries, k) int32 of the split."""
        return self.split(split).neighbours()

    def sample_of_query(self, split: str) -> np.ndarray:
        """(n_queries,) int64: the sample of each query chunk of the split."""
        return self.split(split).sample_of_query()

    def sample_doc_ids(self, split: str, j: int) -> np.ndarray:
        """(n,) int64: the split's documents in sample j (for "train", database doc ids)."""
        return self.split(split).sample_doc_ids(j)

    def __repr__(self) -> str:
        return (
            f"Database({str(self.root)!r}, chunks={len(self)}, index={self.index_params.spec!r}, "
            f"splits={self.splits})"
        )


def open_db(
    path: str | os.PathLike,
    *,
    tokenizer: str | None = None,
    chunk_size: int | None = None,
    block_size: int | None = None,
    embedder: str | None = None,
    verify: bool = True,
) -> Database:
    """Opens a complete database; the keyword arguments are what the caller (a model) expects.

    verify: check every file against the manifest's sha256 (files over EAGER_HASH_BYTES when
    first read); False checks only their sizes.

    Raises DatabaseError naming every expectation the database does not meet, a stage that is not
    complete, a manifest from a newer format, or a file whose size or sha256 is not the manifest's.
    """
    root = Path(path)
    manifest = Manifest.load(root, DATABASE)
    for stage in ("tokenize", "chunks", "embed", "index", "neighbours.train"):
        manifest.require_stage(stage)
    stored = {
        "tokenizer": manifest.config["tokenizer"],
        "chunk_size": manifest.config["chunk_size"],
        "block_size": manifest.config["block_size"],
        "embedder": manifest.components["embedder"]["name"],
    }
    expected = {
        "tokenizer": None if tokenizer is None else canonical_source(tokenizer),
        "chunk_size": chunk_size,
        "block_size": block_size,
        "embedder": None if embedder is None else resolve_name(embedder),
    }
    mismatches = [
        f"{key}: the database has {stored[key]!r}, expected {value!r}"
        for key, value in expected.items()
        if value is not None and value != stored[key]
    ]
    if mismatches:
        raise DatabaseError(f"{root} does not match:\n  " + "\n  ".join(mismatches))
    return Database(root, manifest, verify)
