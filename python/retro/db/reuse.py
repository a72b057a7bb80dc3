"""Embeddings reused from an earlier database: the rows whose tokens it already embedded.

A row (a chunk, or a query chunk of a split) is embedded as the text of its tokens with the
end-of-document tokens left out (Tokenizer.texts_without_eod: the non-empty eod-separated pieces
joined by newlines), so two rows with the same pieces embed the same text. A row's key is those
pieces joined by one eod and padded with eods to m tokens (int32 bytes); a chunk's stored row
already is its key. A source database built with the same tokenizer, chunk size and embedder
(name, dim, precision) gives the embedding of every row whose key it holds, from its chunks
(embeddings.npy) and from the query chunks of every split whose queries stage is complete.

The reused vectors are the source's bytes. The embedder's output for a text depends slightly on
the other texts of its encode call (each batch is padded to its longest text; in bf16 that moves
a vector by a few fp16 ulps), so a row reused from another block, or embedded without its block's
reused rows, may differ from a build from scratch by that much (max 7.7e-4 in the tests, 1.3e-3 in
245 of 21031 chunks of a default-corpus knowledge build; see
tests/test_db_reuse.py). Reuse is per row within each resumable block: a resumed build keeps the
blocks already written, whatever it reused then.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retro.data.tokenizer import Tokenizer
from retro.db.chunks import CHUNK_FILES
from retro.db.manifest import DATABASE, DatabaseError, Manifest
from retro.db.stages import EMBEDDINGS_FILE, query_files
from retro.db.streams import TokenStream


def row_keys(rows: np.ndarray, eod_id: int) -> list[bytes]:
    """The key of each of the (n, m) token rows (see the module docstring)."""
    rows = np.asarray(rows, dtype=np.int32)
    keys = rows.copy()
    for i in np.flatnonzero((rows == eod_id).any(axis=1)):
        row = rows[i]
        pieces = [piece[piece != eod_id] for piece in np.split(row, np.flatnonzero(row == eod_id))]
        joined = [token for piece in pieces if len(piece) for token in (*piece, eod_id)][:-1]
        keys[i] = eod_id
        keys[i, : len(joined)] = joined
    return [key.tobytes() for key in keys]


def check_source(root: Path, tokenizer: Tokenizer, chunk_size: int, embedder: dict) -> Manifest:
    """The manifest of root, a database whose embeddings a build with this tokenizer, chunk size
    and embedder ({"name", "precision"} and maybe "dim") can reuse; else DatabaseError."""
    root = Path(root)
    source = Manifest.load(root, DATABASE)
    why = f"cannot reuse embeddings of {root}:"
    theirs = source.components.get("tokenizer", {})
    if theirs.get("sha256") != tokenizer.sha256:
        raise DatabaseError(f"{why} its tokenizer differs ({theirs.get('name')!r}, sha256 "
                            f"{str(theirs.get('sha256'))[:12]}; this build's {tokenizer.name!r}, "
                            f"{tokenizer.sha256[:12]})")
    if source.config.get("chunk_size") != chunk_size:
        raise DatabaseError(f"{why} its chunk_size is {source.config.get('chunk_size')}, "
                            f"this build's {chunk_size}")
    theirs = source.components.get("embedder", {})
    for key in ("name", "dim", "precision"):
        if key in embedder and theirs.get(key) != embedder[key]:
            raise DatabaseError(f"{why} its embedder {key} is {theirs.get(key)!r}, this build's "
                                f"{embedder[key]!r}")
    source.require_stage("embed")
    return source


class EmbeddingSource:
    """The embeddings of a source database by row key (see the module docstring).

    Args:
        source: the manifest returned by :func:`check_source` (or a database's own manifest, in
            its build, once its chunks are embedded).
        also: asked for the rows that source does not hold.
    """

    def __init__(self, source: Manifest, also: EmbeddingSource | None = None) -> None:
        self.root = source.root
        self.also = also
        self.eod_id = source.components["tokenizer"]["eod_id"]
        config = source.config
        # (file of the embedded token rows, None for a split's query chunks; embeddings file)
        files: list[tuple[str | None, str]] = [(CHUNK_FILES["tokens"], EMBEDDINGS_FILE)]
        streams = {}
        for stage in sorted(source.stages):
            if stage.startswith("queries."):
                split = stage.split(".", 1)[1]
                streams[split] = TokenStream.open(self.root, split, config["block_size"],
                                                  config["chunk_size"])
                files.append((None, query_files(split)["embeddings"]))
        for path in [path for pair in files for path in pair if path]:
            if not source.file_is_valid(path):
                raise DatabaseError(f"cannot reuse embeddings of {self.root}: {path} is missing "
                                    "or changed since it was built")
        self.arrays: list[np.ndarray] = []
        self.where: dict[bytes, tuple[int, int]] = {}  # key -> (array, row), the first found
        for a, (tokens, path) in enumerate(files):
            embeddings = np.load(self.root / path, mmap_mode="r")
            if tokens:
                rows = np.load(self.root / tokens, mmap_mode="r")
            else:
                stream = streams[path.split("/")[1]]
                rows = stream.query_tokens(0, stream.n_queries)
            self.arrays.append(embeddings)
            for i, key in enumerate(row_keys(rows, self.eod_id)):
                self.where.setdefault(key, (a, i))
        self.dim = self.arrays[0].shape[1]

    def __len__(self) -> int:
        return len(self.where)

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """found (n,) bool: the source holds row i's key; (found.sum(), dim) float16: their
        embeddings, in row order."""
        hits = [self.where.get(key, (-1, -1)) for key in row_keys(rows, self.eod_id)]
        array, row = np.array(hits, dtype=np.int64).reshape(-1, 2).T
        found = array >= 0
        vectors = np.empty((len(found), self.dim), dtype=np.float16)
        for a, embeddings in enumerate(self.arrays):
            mine = array == a
            vectors[mine] = embeddings[row[mine]]
        if self.also is not None and not found.all():
            missing = np.flatnonzero(~found)
            more, extra = self.also.lookup(np.asarray(rows)[missing])
            vectors[missing[more]] = extra
            found[missing[more]] = True
        return found, vectors[found]
