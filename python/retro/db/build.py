"""``build_db``: corpus -> tokens -> chunks -> embeddings -> index -> queries -> neighbours.

Stages, each resumable and skipped when complete (see stages.py):

    tokenize            documents split into train/valid by document (seeded), each split joined
                        into a token stream
    chunks              train documents cut into chunk_size-token chunks (the database)
    embed               every chunk's text embedded (fp16)
    index               IVF-PQ trained on a sample, every chunk added (nothing for Flat)
    queries.<split>     every query chunk of the split's samples embedded
    neighbours.<split>  top n_nbrs chunks per query chunk; a train query excludes every chunk of
                        every document of its sample

Under ``torchrun --nproc-per-node N -m retro db build ...`` the N ranks build together (see
stages.py): they tokenize by document range and embed, encode into the index, embed queries and
search neighbours by block range; rank 0 alone chunks, trains the index's quantizers and writes
the manifest. With ``index_shards`` S > 1 the index is S shard files, each rank adds to its own
and, with S >= N, loads only its own to search (queries broadcast, per-shard results gathered and
merged). The files are byte-identical to a one-process build with the same config.

With ``reuse_embeddings`` (``--reuse-embeddings DIR``) the embed and queries.<split> stages take
the embedding of every row (chunk or query chunk) whose tokens the database DIR already embedded
(same tokenizer, chunk size and embedder, else refused) and embed only the others, e.g. a
``valid_in_db`` or ``edits`` build from a strict one (retro.db.reuse). The stage records say which
database and how many rows; vectors may differ from a build from scratch by a few fp16 ulps (the
embedder pads each batch to its longest text), see reuse.py.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import timedelta
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np

from retro.data.edits import Edits, apply_edits, check_edits
from retro.data.corpus import canonical_source, corpus_fingerprint, read_corpus
from retro.data.tokenizer import GPT2, load_tokenizer
from retro.db import stages
from retro.db.database import Database, open_db
from retro.db.streams import TokenStream
from retro.db.embed import (
    BLOCK, DEFAULT, Embedder, check_precision, default_device, default_precision, resolve_name,
)
from retro.db.indexing import AUTO, IndexParams, choose_index
from retro.db.manifest import DATABASE, DatabaseError, open_or_create
from retro.db.reuse import EmbeddingSource, check_source
from retro.files import remove_stale_temporaries
from retro.errors import RetroError
from retro.world import World, barrier, join_world, leave_world

# How long a rank waits for the others: rank 0 chunks and trains the index alone meanwhile.
RANK_WAIT = timedelta(hours=12)


@dataclass(frozen=True)
class BuildConfig:
    """Parameters of a database build (all recorded in the manifest's ``config``)."""

    corpus: tuple[str, ...] = ("default",)  # sources: "default", "factbook", "kjv", paths
    text_field: str = "text"  # field of .jsonl records / column of parquet files
    tokenizer: str = GPT2  # "gpt2" or a tokenizer.json path
    embedder: str = DEFAULT  # "default" (all-MiniLM-L6-v2) or a model directory
    index: str = AUTO  # "auto", "Flat", "IVF<nlist>,PQ<pq_m>" or "OPQ<m>[_<d>],IVF<nlist>,PQ<pq_m>"
    nprobe: int | None = None  # lists visited per query; None: chosen with the index
    index_shards: int = 1  # the IVF-PQ index as this many shards of chunk-id ranges (not Flat)
    n_nbrs: int = 2  # neighbours kept per query chunk (k)
    chunk_size: int = 64  # tokens per chunk (m)
    block_size: int = 2048  # tokens per training sample (T), a multiple of chunk_size
    valid_fraction: float = 0.05  # share of documents held out for validation
    seed: int = 0  # seeds the split, the index training sample and k-means
    block: int = BLOCK  # rows per resumable block of the embedding and neighbour stages
    # Knowledge in the database (DeepMind's Wikipedia setting): the valid documents' chunks are
    # added to the database after the train ones, so that valid chunks can retrieve themselves.
    # False (strict): the database holds train documents only.
    valid_in_db: bool = False
    # Whole-word replacements made in the train documents (the database), never in the valid
    # ones: a database of edited knowledge (retro.data.edits), e.g. (("Paris", "Lyon"),).
    edits: Edits = ()
    # Each document starts a chunk: the streams pad every document with eods to a multiple of
    # chunk_size, so that a query chunk lies in one document and equals a database chunk (its
    # embedding is the chunk's, and a database holding the text retrieves it aligned). The
    # padding costs ~m/2 tokens per document and is never a target.
    align_documents: bool = False
    # An already built database of the same tokenizer, chunk size and embedder: the chunks and
    # query chunks whose tokens it holds take its embeddings instead of being embedded again
    # (retro.db.reuse). Not a parameter of the result: left out of the manifest's config.
    reuse_embeddings: str | None = None
    # The embedder's precision, one of retro.db.embed.PRECISIONS ("int8": faster on the CPU, its
    # neighbours further from fp32's); None: the machine's default (default_precision). Recorded
    # in the manifest's components, not in its config: a resumed build keeps the recorded one and
    # refuses another.
    embed_precision: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.corpus, str):
            object.__setattr__(self, "corpus", (self.corpus,))
        if not self.corpus:
            raise RetroError("no corpus given")
        if self.chunk_size < 1 or self.block_size < self.chunk_size or self.block_size % self.chunk_size:
            raise RetroError(
                f"block_size ({self.block_size}) must be a positive multiple of chunk_size "
                f"({self.chunk_size})"
            )
        if not 0 <= self.valid_fraction < 1:
            raise RetroError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        object.__setattr__(self, "edits", check_edits(self.edits))
        if self.valid_in_db and self.valid_fraction == 0:
            raise RetroError("valid_in_db adds the valid documents to the database, but "
                             "valid_fraction is 0: there are none")
        if self.n_nbrs < 1 or self.block < 1 or (self.nprobe is not None and self.nprobe < 1):
            raise RetroError("n_nbrs, block and nprobe must be positive")
        if not isinstance(self.index_shards, int) or self.index_shards < 1:
            raise RetroError(f"index_shards must be a positive integer, got {self.index_shards!r}")
        if self.embed_precision is not None:
            check_precision(self.embed_precision)

    def to_json(self) -> dict:
        """The config as the manifest stores it, paths made absolute."""
        value = dataclasses.asdict(self)
        value["corpus"] = [canonical_source(source) for source in self.corpus]
        value["tokenizer"] = canonical_source(self.tokenizer)
        value["embedder"] = resolve_name(self.embedder)
        value["edits"] = [list(pair) for pair in self.edits]
        # left out at their defaults, as before they existed
        for key in ("valid_in_db", "edits", "align_documents"):
            if not value[key]:
                del value[key]
        if value["index_shards"] == 1:
            del value["index_shards"]
        del value["reuse_embeddings"]
        del value["embed_precision"]
        return value


def build_db(
    out: str | Path,
    config: BuildConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **overrides,
) -> Database:
    """Builds (or resumes building) the retrieval database in directory out.

    Args:
        out: the database directory; created if missing, resumed if it holds a manifest.
        config: the parameters; keyword overrides replace single fields, e.g. block_size=1024.
        progress: show progress bars (tqdm, on stderr).
        log: receives one line per skipped stage (default: stderr).

    Returns:
        The opened database. Raises CorpusError, DatabaseError or ValueError on bad input, before
        anything already built is touched.
    """
    config = dataclasses.replace(config or BuildConfig(), **overrides)
    world = join_world("gloo", timeout=RANK_WAIT)
    try:
        return _build(Path(out), config, progress, log, world)
    finally:
        leave_world(world)


def _build(
    out: Path,
    config: BuildConfig,
    progress: bool,
    log: Callable[[str], None] | None,
    world: World,
) -> Database:
    """build_db on this rank of world (every rank calls it)."""
    manifest = open_or_create(out, DATABASE, config.to_json())
    tokenizer = load_tokenizer(config.tokenizer)
    documents = read_corpus(config.corpus, config.text_field)
    splits = stages.split_documents(len(documents), config.valid_fraction, config.seed)
    documents = edit_train_documents(documents, splits["train"], config.edits)
    fingerprint = corpus_fingerprint(documents)
    stored_tokenizer = manifest.components.get("tokenizer")
    if stored_tokenizer and stored_tokenizer["sha256"] != tokenizer.sha256:
        raise DatabaseError(f"{out}: the tokenizer {config.tokenizer!r} changed since it was built")

    manifest.components["tokenizer"] = tokenizer.describe()
    manifest.components.setdefault(
        "embedder",
        {"name": resolve_name(config.embedder),
         "precision": config.embed_precision or default_precision(default_device())},
    )
    stored_precision = manifest.components["embedder"]["precision"]
    if config.embed_precision not in (None, stored_precision):
        raise DatabaseError(f"{out}: its embeddings are {stored_precision}; resume without "
                            f"embed_precision or with {stored_precision!r}, not "
                            f"{config.embed_precision!r}")

    def embedder_info() -> dict:
        """The manifest's embedder entry (looked up each time: a rank's manifest is replaced by
        rank 0's after every stage)."""
        return manifest.components["embedder"]

    checked = None
    if config.reuse_embeddings:
        checked = check_source(
            Path(config.reuse_embeddings), tokenizer, config.chunk_size, embedder_info()
        )

    barrier(world)  # every rank has checked the directory before rank 0 creates it
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for directory in [out, *(path for path in out.rglob("*") if path.is_dir())]:
            for path in remove_stale_temporaries(directory):  # of a build killed midway
                (log or _stderr)(f"removed {path}, a temporary file of an interrupted write")
        manifest.save()

    @cache
    def embedder() -> Embedder:
        """The embedder, loaded on first use only (stages that are complete need none)."""
        info = embedder_info()
        loaded = Embedder(info["name"], device=rank_device(world), precision=info["precision"])
        if info.get("dim", loaded.dim) != loaded.dim:
            raise DatabaseError(
                f"{out}: embedder {loaded.name} gives {loaded.dim}-d vectors; the database holds "
                f"{info['dim']}-d ones"
            )
        if checked and checked.components["embedder"].get("dim", loaded.dim) != loaded.dim:
            raise DatabaseError(f"cannot reuse embeddings of {checked.root}: its embedder gives "
                                f"{checked.components['embedder']['dim']}-d vectors, this "
                                f"build's {loaded.dim}-d ones")
        info["dim"] = loaded.dim
        return loaded

    # the reused embeddings, indexed on first use only
    source = cache(partial(EmbeddingSource, checked)) if checked else None
    reuse = source
    runner = stages.StageRunner(manifest, progress, **({"log": log} if log else {}), world=world)
    stages.tokenize(runner, documents, fingerprint, splits, tokenizer, config.block_size,
                    config.chunk_size if config.align_documents else 1)
    stages.chunk(runner, tokenizer, config.chunk_size, config.block_size,
                 ("train", "valid") if config.valid_in_db else ("train",))
    stages.embed_chunks(runner, tokenizer, embedder, config.block, reuse)

    n_chunks = manifest.stages["chunks"]["rows"]
    if "dim" not in embedder_info():  # embeddings made by an earlier run that recorded no dim
        embedder()
    manifest.components["index"] = choose_index(
        n_chunks, embedder_info()["dim"], config.index, config.nprobe, config.index_shards
    ).to_json()
    stages.index(runner, IndexParams(**manifest.components["index"]), config.seed)

    if config.align_documents:
        # every query chunk is a chunk of some document: those of the database's own (all the
        # train ones) take their embeddings from it, the rest from the source if one is given
        def own_and_source() -> EmbeddingSource:
            return EmbeddingSource(manifest, also=source() if source else None)

        reuse = cache(own_and_source)
    for split in splits:
        stages.embed_queries(
            runner, split, tokenizer, embedder, config.chunk_size, config.block_size,
            config.block, reuse,
        )
    for split in splits:
        stages.find_neighbours(
            runner, split, manifest, split == "train", config.n_nbrs, config.chunk_size,
            config.block_size, config.block,
        )
    manifest.counts = {"chunks": n_chunks}
    for split in splits:
        stream = TokenStream.open(out, split, config.block_size, config.chunk_size)
        manifest.counts |= stream.counts(split)
    if world.is_main:
        manifest.save()
    barrier(world)
    return open_db(out)


def edit_train_documents(documents: list[str], train: np.ndarray, edits: Edits) -> list[str]:
    """documents with the edits made in the train ones (the database's) only."""
    if not edits:
        return documents
    edited = list(documents)
    for i, text in zip(train, apply_edits([documents[i] for i in train], edits)):
        edited[i] = text
    return edited


def rank_device(world: World) -> str | None:
    """The embedder's device on this rank: the rank's own GPU under torchrun, else the default."""
    if world.distributed and default_device() == "cuda":
        return f"cuda:{world.local_rank}"
    return None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
