"""The chunk store: the database's documents cut into m-token chunks, never across a document.

Chunk i holds ``tokens[i, :lengths[i]]`` of document ``doc_ids[i]``; only a document's last chunk
may be shorter than m, and the rest of its row is the end-of-document token. A chunk's neighbour
value (what the encoder reads) is the chunk and its continuation, the next chunk of the same
document: 2m tokens, real ones first, eod after them, the value's length counting real ones only.

Files: ``chunks/tokens.npy`` (N, m) uint16 or int32, ``chunks/lengths.npy`` (N,) int32,
``chunks/doc_ids.npy`` (N,) int64, ``chunks/doc_offsets.npy`` (n_docs + 1,) int64 (document d's
chunks are doc_offsets[d] .. doc_offsets[d + 1] - 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retro.db.streams import TokenStream, document_lengths
from retro.files import load_npy, save_npy_atomically

CHUNK_FILES = {name: f"chunks/{name}.npy" for name in ("tokens", "lengths", "doc_ids", "doc_offsets")}


def write_chunks(root: Path, streams: Sequence[TokenStream], eod_id: int) -> list[str]:
    """Cuts every document of the streams, in order, (without its eod) into chunks; returns the
    written paths. Document ids count on from one stream to the next."""
    parts = [cut_documents(stream, eod_id) for stream in streams]
    doc_ids = np.concatenate([ids + sum(s.n_docs for s in streams[:i])
                              for i, (ids, _, _) in enumerate(parts)])
    lengths = np.concatenate([lengths for _, lengths, _ in parts])
    tokens = np.concatenate([chunk_tokens(stream, starts, lengths, eod_id)
                             for stream, (_, lengths, starts) in zip(streams, parts)])
    n_docs = sum(stream.n_docs for stream in streams)
    doc_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc_ids, minlength=n_docs), out=doc_offsets[1:])

    arrays = {"tokens": tokens, "lengths": lengths, "doc_ids": doc_ids,
              "doc_offsets": doc_offsets}
    for name, array in arrays.items():
        save_npy_atomically(root / CHUNK_FILES[name], array)
    return list(CHUNK_FILES.values())


def cut_documents(stream: TokenStream, eod_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stream's documents as chunks: doc_ids (n,) int64 (in the stream), lengths (n,) int32
    and starts (n,) int64 (each chunk's first token in the stream)."""
    m = stream.chunk_size
    doc_lengths = document_lengths(stream, eod_id)
    chunks_per_doc = -(-doc_lengths // m)
    first_chunk = np.zeros(stream.n_docs + 1, dtype=np.int64)
    np.cumsum(chunks_per_doc, out=first_chunk[1:])
    doc_ids = np.repeat(np.arange(stream.n_docs, dtype=np.int64), chunks_per_doc)
    position = np.arange(int(first_chunk[-1]), dtype=np.int64) - first_chunk[doc_ids]
    lengths = np.minimum(m, doc_lengths[doc_ids] - position * m).astype(np.int32)
    return doc_ids, lengths, stream.doc_offsets[doc_ids] + position * m


def chunk_tokens(stream: TokenStream, starts: np.ndarray, lengths: np.ndarray,
                 eod_id: int) -> np.ndarray:
    """(n, m) tokens of the chunks starting at starts, eod past each chunk's length."""
    m = stream.chunk_size
    # Positions past a chunk's length read its doc's eod or later tokens and become eod.
    columns = np.arange(m, dtype=np.int64)
    gather = np.minimum(starts[:, None] + columns[None, :], len(stream.tokens) - 1)
    tokens = np.asarray(stream.tokens)[gather]
    tokens[columns[None, :] >= lengths[:, None]] = eod_id
    return tokens


@dataclass(frozen=True)
class ChunkStore:
    """The memory-mapped chunk files."""

    tokens: np.ndarray  # (N, m) uint16 or int32, eod-padded
    lengths: np.ndarray  # (N,) int32
    doc_ids: np.ndarray  # (N,) int64
    doc_offsets: np.ndarray  # (n_docs + 1,) int64
    eod_id: int

    @classmethod
    def open(cls, root: Path, eod_id: int) -> ChunkStore:
        tokens, lengths, doc_ids, doc_offsets = (load_npy(root / CHUNK_FILES[name])
                                                 for name in CHUNK_FILES)  # the fields' order
        return cls(tokens, lengths, doc_ids, doc_offsets, eod_id)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def chunk_size(self) -> int:
        return self.tokens.shape[1]

    def continuation(self, ids: np.ndarray) -> np.ndarray:
        """Same shape as ids (int64, -1 = none): the next chunk of the same document, or -1.

        -1 in ids (no neighbour) gives -1.
        """
        ids = np.asarray(ids, dtype=np.int64)
        nxt = ids + 1
        valid = (ids >= 0) & (nxt < len(self))
        same_doc = np.zeros(ids.shape, dtype=bool)
        same_doc[valid] = self.doc_ids[nxt[valid]] == self.doc_ids[ids[valid]]
        return np.where(same_doc, nxt, -1)

    def neighbour_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(..., 2m) int64 tokens of the neighbour values of chunk ids (..., -1 for none): the
        chunk then its continuation, real tokens first, eod after them."""
        ids = np.asarray(ids, dtype=np.int64)
        m = self.chunk_size
        tokens = np.full((*ids.shape, 2 * m), self.eod_id, dtype=np.int64)
        found = ids >= 0
        tokens[found, :m] = self.tokens[ids[found]]
        nxt = self.continuation(ids)
        # Only a full chunk can have a continuation, so the real tokens stay contiguous.
        tokens[nxt >= 0, m:] = self.tokens[nxt[nxt >= 0]]
        return tokens

    def neighbour_lengths(self, ids: np.ndarray) -> np.ndarray:
        """(...,) int32 real tokens of the neighbour values of chunk ids (0 where the id is -1):
        what the build stores beside the ids."""
        ids = np.asarray(ids, dtype=np.int64)
        lengths = np.zeros(ids.shape, dtype=np.int32)
        lengths[ids >= 0] = self.lengths[ids[ids >= 0]]
        nxt = self.continuation(ids)
        lengths[nxt >= 0] += self.lengths[nxt[nxt >= 0]]
        return lengths

    def neighbour_values(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour_tokens(ids), neighbour_lengths(ids)): a freshly retrieved neighbour set."""
        return self.neighbour_tokens(ids), self.neighbour_lengths(ids)
