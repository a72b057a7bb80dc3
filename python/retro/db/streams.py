"""Token streams: a split's documents joined by end-of-document tokens, cut into samples and queries.

Each document is followed by one end-of-document (eod) token, so document i occupies
``stream[doc_offsets[i] : doc_offsets[i + 1]]``, its eod last. A stream built with ``align`` = m
pads each document's eod with more eods up to a multiple of m: every document then starts a chunk,
so each query chunk lies in one document and is a chunk of the database (the same tokens, the same
embedding), and the padding targets (an eod after an eod) are no one's to predict
(:func:`padding_targets`). For the block size T, sample j is
``stream[j * T : j * T + T + 1]`` (inputs and next-token targets) for j < (len(stream) - 1) // T,
and query chunk q is ``stream[q * m : (q + 1) * m]`` (m = chunk size) for q < n_samples * T / m:
the m-token slices of the samples' first T tokens, sample after sample.

Files of split s: ``tokens/<s>/stream.npy`` (n_tokens,) uint16 or int32, ``tokens/<s>/doc_offsets.npy``
(n_docs + 1,) int64, ``tokens/<s>/doc_index.npy`` (n_docs,) int64 (each document's position in the
corpus as read).

Tokenized on several ranks, each rank writes its range of the corpus's documents as a part
(``tokens/parts/<rank>.tokens.npy``, the documents concatenated, and ``<rank>.lengths.npy``), and
one rank joins the parts into the streams and removes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retro.files import load_npy, save_npy_atomically

PARTS_DIR = "tokens/parts"


def stream_files(split: str) -> dict[str, str]:
    """Relative paths of a split's stream files."""
    return {
        name: f"tokens/{split}/{name}.npy" for name in ("stream", "doc_offsets", "doc_index")
    }


def write_stream(
    root: Path,
    split: str,
    documents: Sequence[np.ndarray],
    doc_index: np.ndarray,
    eod_id: int,
    dtype: np.dtype,
    align: int = 1,
) -> list[str]:
    """Joins documents (each (len_i,) int) with an eod after each, padded with eods to a
    multiple of align tokens; returns the written paths."""
    lengths = np.array([-(-(len(doc) + 1) // align) * align for doc in documents], dtype=np.int64)
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    stream = np.full(int(offsets[-1]), eod_id, dtype=dtype)
    for doc, start in zip(documents, offsets[:-1]):
        stream[start : start + len(doc)] = doc
    files = stream_files(split)
    save_npy_atomically(root / files["stream"], stream)
    save_npy_atomically(root / files["doc_offsets"], offsets)
    save_npy_atomically(root / files["doc_index"], np.asarray(doc_index, dtype=np.int64))
    return list(files.values())


def write_part(root: Path, rank: int, documents: Sequence[np.ndarray], dtype: np.dtype) -> None:
    """Saves rank's tokenized documents (each (len_i,) int) as its part."""
    lengths = np.array([len(doc) for doc in documents], dtype=np.int64)
    tokens = np.concatenate([np.zeros(0, dtype), *documents]).astype(dtype)
    save_npy_atomically(root / PARTS_DIR / f"{rank}.tokens.npy", tokens)
    save_npy_atomically(root / PARTS_DIR / f"{rank}.lengths.npy", lengths)


def read_parts(root: Path, n_ranks: int) -> list[np.ndarray]:
    """The documents of parts 0 .. n_ranks - 1 in order: (len_i,) views of memory-mapped parts."""
    documents: list[np.ndarray] = []
    for rank in range(n_ranks):
        tokens = load_npy(root / PARTS_DIR / f"{rank}.tokens.npy")
        lengths = load_npy(root / PARTS_DIR / f"{rank}.lengths.npy", mmap=False)
        documents += np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return documents


def remove_parts(root: Path) -> None:
    """Deletes every part (those of an earlier run on more ranks too)."""
    for path in (root / PARTS_DIR).glob("*.npy"):
        path.unlink()
    (root / PARTS_DIR).rmdir()


def document_lengths(stream: TokenStream, eod_id: int) -> np.ndarray:
    """(n_docs,) int64: each document's tokens without the eods that end its span of the stream
    (its own eod, and up to m - 1 of padding in an aligned stream; a document holds none)."""
    starts, ends = stream.doc_offsets[:-1], stream.doc_offsets[1:]
    window = stream.chunk_size + 1  # holds a non-empty document's last token
    columns = ends[:, None] - window + np.arange(window)[None, :]
    is_eod = np.asarray(stream.tokens)[np.maximum(columns, 0)] == eod_id
    is_eod |= columns < starts[:, None]  # before the span (a short document): never its token
    trailing = np.cumprod(is_eod[:, ::-1], axis=1).sum(axis=1)
    return np.maximum(ends - starts - trailing, 0).astype(np.int64)


def padding_targets(samples: np.ndarray, eod_id: int) -> np.ndarray:
    """samples (..., T + 1) -> (..., T) bool: the targets that are padding (an eod after an
    eod), which no loss counts."""
    samples = np.asarray(samples)
    return (samples[..., 1:] == eod_id) & (samples[..., :-1] == eod_id)


@dataclass(frozen=True)
class TokenStream:
    """One split's stream, memory-mapped, with its sample and query-chunk geometry."""

    tokens: np.ndarray  # (n_tokens,) uint16 or int32
    doc_offsets: np.ndarray  # (n_docs + 1,) int64
    doc_index: np.ndarray  # (n_docs,) int64
    block_size: int  # T
    chunk_size: int  # m

    @classmethod
    def open(cls, root: Path, split: str, block_size: int, chunk_size: int) -> TokenStream:
        files = stream_files(split)
        return cls(
            load_npy(root / files["stream"]),
            load_npy(root / files["doc_offsets"]),
            load_npy(root / files["doc_index"]),
            block_size,
            chunk_size,
        )

    @property
    def n_docs(self) -> int:
        return len(self.doc_index)

    @property
    def n_samples(self) -> int:
        """Samples of T + 1 tokens starting every T tokens."""
        return max(0, (len(self.tokens) - 1) // self.block_size)

    @property
    def chunks_per_sample(self) -> int:
        return self.block_size // self.chunk_size

    @property
    def n_queries(self) -> int:
        return self.n_samples * self.chunks_per_sample

    def counts(self, split: str) -> dict[str, int]:
        """Documents, tokens, samples and query chunks, keyed "<split>_docs" etc."""
        return {
            f"{split}_docs": self.n_docs,
            f"{split}_tokens": len(self.tokens),
            f"{split}_samples": self.n_samples,
            f"{split}_queries": self.n_queries,
        }

    def sample(self, j: int) -> np.ndarray:
        """(T + 1,) tokens of sample j."""
        start = j * self.block_size
        return np.asarray(self.tokens[start : start + self.block_size + 1])

    def query_tokens(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, m) tokens of query chunks start .. stop - 1."""
        m = self.chunk_size
        return np.asarray(self.tokens[start * m : stop * m]).reshape(stop - start, m)

    def own_neighbours(self, j: int, eod_id: int,
                       shifts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What sample j would retrieve from a database holding its own text, laid out as
        ChunkStore.neighbour_tokens lays out a neighbour: for each chunk u, its real tokens (up to
        its document's eod) then, after a full chunk, the real tokens of chunk u + 1 (its
        continuation), eod after them (also past the stream's end): tokens (L, 2m) int64 and
        their count (L,) int32. shifts (L,) int, 0 .. m: chunk u's neighbour starts shifts[u]
        tokens into the chunk instead (the same 2m-token window, cut at the first eod: the text
        a neighbour holds, at another offset)."""
        m, n_chunks = self.chunk_size, self.chunks_per_sample
        offsets = np.zeros(n_chunks, dtype=np.int64) if shifts is None else np.asarray(shifts)
        if (offsets.shape != (n_chunks,) or not np.issubdtype(offsets.dtype, np.integer)
                or offsets.min() < 0 or offsets.max() > m):
            raise ValueError(f"shifts must be {n_chunks} integer offsets in 0..{m}, not "
                             f"{offsets.dtype} {offsets.shape}")
        start = j * self.block_size
        span = np.full((n_chunks + 2) * m, eod_id, dtype=np.int64)  # chunks 0 .. L + 1 of sample j
        text = np.asarray(self.tokens[start:start + len(span)])
        span[:len(text)] = text
        windows = np.stack([span[u * m + s:u * m + s + 2 * m] for u, s in enumerate(offsets)])
        is_eod = windows == eod_id
        counts = np.where(is_eod.any(axis=1), is_eod.argmax(axis=1), 2 * m).astype(np.int32)
        windows[np.arange(2 * m) >= counts[:, None]] = eod_id
        return windows, counts

    def sample_of_query(self) -> np.ndarray:
        """(n_queries,) int64: the sample each query chunk belongs to."""
        return np.arange(self.n_queries, dtype=np.int64) // self.chunks_per_sample

    def sample_doc_ranges(self) -> np.ndarray:
        """(n_samples, 2) int64: documents [first, last) with a token in each sample's T + 1."""
        starts = np.arange(self.n_samples, dtype=np.int64) * self.block_size
        first = np.searchsorted(self.doc_offsets, starts, side="right") - 1
        last = np.searchsorted(self.doc_offsets, starts + self.block_size, side="right")
        return np.stack([first, last], axis=1).astype(np.int64)
