"""``query_db``: neighbours for another corpus against an existing database (``retro db query``).

The output directory is a query set: its own manifest (kind "retro-query-set", naming the
database and its manifest's checksum), and one split, laid out as a database's splits are::

    tokens/<name>/..., queries/<name>/..., neighbours/<name>/...

All documents of the corpus go to the one split (no train/valid split). None of them is in the
database, so no query excludes anything; to retrieve for text that is also in the database, pass
``exclude_doc_ids`` to :meth:`Database.retrieve`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from retro.data.corpus import canonical_source, corpus_fingerprint, read_corpus
from retro.db import stages
from retro.db.database import SplitView, open_db
from retro.db.streams import TokenStream
from retro.db.manifest import MANIFEST, QUERY_SET, Manifest, open_or_create
from retro.errors import RetroError
from retro.files import sha256_of
from retro.world import World


class QuerySet(SplitView):
    """A query set's one split, with the path of the database it was searched against."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        config = manifest.config
        super().__init__(root, config["name"], config["block_size"], config["chunk_size"])
        self.manifest = manifest
        self.database = Path(config["database"])


def open_query_set(path: str | Path) -> QuerySet:
    root = Path(path)
    manifest = Manifest.load(root, QUERY_SET)
    manifest.require_stage(f"neighbours.{manifest.config['name']}")
    return QuerySet(root, manifest)


def query_db(
    database: str | Path,
    corpus: Sequence[str],
    out: str | Path,
    name: str = "eval",
    text_field: str = "text",
    block_size: int | None = None,
    embedder: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> QuerySet:
    """Tokenizes, embeds and searches corpus against database; resumable like build_db.

    Args:
        database: a built database directory.
        corpus: sources as for build_db (names or paths).
        out: the query set's directory.
        name: the split's name.
        block_size: tokens per sample (default: the database's).
        embedder: default the database's; another must give vectors of the same dimension.
    """
    db = open_db(database)
    block_size = block_size or db.block_size
    if block_size % db.chunk_size:
        raise RetroError(f"block_size {block_size} is not a multiple of chunk_size {db.chunk_size}")
    chosen = db.embedder if embedder is None else db.embedder_for(embedder)
    out = Path(out)
    config = {
        "database": str(db.root.resolve()),
        "corpus": [canonical_source(source) for source in corpus],
        "text_field": text_field,
        "name": name,
        "block_size": block_size,
        "chunk_size": db.chunk_size,
        "n_nbrs": db.n_nbrs,
        "embedder": chosen.name,
    }
    manifest = open_or_create(out, QUERY_SET, config)
    documents = read_corpus(corpus, text_field)
    manifest.components = {
        "database_manifest": {"sha256": sha256_of(db.root / MANIFEST)},
        "tokenizer": db.manifest.components["tokenizer"],
        "embedder": chosen.describe(),
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest.save()

    runner = stages.StageRunner(manifest, progress, **({"log": log} if log else {}),
                                world=World())  # one process
    splits = {name: np.arange(len(documents), dtype=np.int64)}
    stages.tokenize(runner, documents, corpus_fingerprint(documents), splits, db.tokenizer, block_size)
    stages.embed_queries(
        runner, name, db.tokenizer, cache(lambda: chosen), db.chunk_size, block_size,
        db.config["block"],
    )
    stages.find_neighbours(
        runner, name, db.manifest, False, db.n_nbrs, db.chunk_size, block_size, db.config["block"]
    )
    manifest.counts = TokenStream.open(out, name, block_size, db.chunk_size).counts(name)
    manifest.save()
    return open_query_set(out)
