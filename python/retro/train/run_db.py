"""Opening the database of a run again, for evaluation and generation.

``state["db"]`` is :func:`retro.train.checkpoint.db_identity` of the training database.
Evaluation and generation open a database through :func:`open_run_db`, which refuses one whose tokenizer, chunk
size, block size or embedder differ from it, or that does not fit the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from retro.train.checkpoint import MODEL_DB_KEYS, db_identity, db_mismatches
from retro.db import Database, DatabaseError, open_db
from retro.model import GPT

# The fields a run's database must share with the one it was trained on ("path" may differ).
IDENTITY_KEYS = MODEL_DB_KEYS + ("embedder", "embedder_dim")


def open_run_db(model: GPT, state: dict[str, Any], path: str | os.PathLike | None = None) -> Database:
    """Opens `path` (default: the run's own database) and checks that it is the run's database.

    Raises DatabaseError naming each mismatch: an identity field, the model's chunk size, a block
    size shorter than the database's samples, the neighbour length (chunk + continuation = 2m) or
    a vocabulary larger than the model's.
    """
    trained = state.get("db") or {}
    if path is None:
        if "path" not in trained:
            raise DatabaseError("the run does not record its database: pass --db DIR")
        path = trained["path"]
    db = open_db(Path(path))
    mismatches = db_mismatches(trained, db, IDENTITY_KEYS) if trained else []
    config = model.config
    if config.chunk_size != db.chunk_size:
        mismatches.append(f"chunk_size: the model has {config.chunk_size}, the database "
                          f"{db.chunk_size}")
    if config.block_size < db.block_size:
        mismatches.append(f"block_size: the model reads {config.block_size} tokens, the "
                          f"database's samples have {db.block_size}")
    if db.tokenizer.vocab_size > config.vocab_size:
        mismatches.append(f"vocabulary: the tokenizer has {db.tokenizer.vocab_size} tokens, the "
                          f"model {config.vocab_size}")
    if config.nbr_len != 2 * db.chunk_size and model.encoder is not None:
        mismatches.append(f"nbr_len: the model reads {config.nbr_len} neighbour tokens, the "
                          f"database gives chunk + continuation = {2 * db.chunk_size}")
    if mismatches:
        raise DatabaseError(f"{db.root} is not the database of this run:\n  "
                            + "\n  ".join(mismatches))
    return db


def open_matching_db(db: Database, path: str | os.PathLike) -> Database:
    """Opens the database at path for the runs of db (another retrieval database for them, e.g. one
    with edited knowledge); raises DatabaseError naming each identity field that differs."""
    other = open_db(Path(path))
    mismatches = db_mismatches(db_identity(db), other, IDENTITY_KEYS)
    if mismatches:
        raise DatabaseError(f"{other.root} cannot stand in for {db.root}:\n  " + "\n  ".join(mismatches))
    return other
