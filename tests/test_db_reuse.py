"""retro db build --reuse-embeddings: rows a database already embedded are taken from it.

The knowledge build (valid_in_db) reusing the strict reference database embeds only valid
documents' chunks, and an edited build only the rows whose tokens changed (chunks of edited
documents, train query chunks after the first edit); both match a build from scratch within the
measured tolerance below. A source of another tokenizer, chunk size or embedder is refused.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from test_db_support import CONFIG, corpus_dir, data_files, documents, reference_db

from retro.data.edits import apply_edits
from retro.db import build_db, open_db
from retro.db.embed import Embedder
from retro.db.manifest import DatabaseError
from retro.db.stages import FAIL_AT, InjectedFailure

EDITS = (("volcano", "geyser"),)


@pytest.fixture
def embedded(monkeypatch) -> list[str]:
    """Every text the embedder embeds while the test runs."""
    texts: list[str] = []
    embed = Embedder.embed

    def counting(self, batch: list[str]) -> np.ndarray:
        texts.extend(batch)
        return embed(self, batch)

    monkeypatch.setattr(Embedder, "embed", counting)
    return texts


def build(out, base, **overrides):
    return build_db(out, CONFIG, corpus=(str(corpus_dir(base)),), progress=False,
                    log=lambda _: None, **overrides)


def row_texts(db, split: str | None = None) -> list[str]:
    """The embedded text of every chunk (split None) or query chunk of split."""
    if split is None:
        return db.tokenizer.texts_without_eod(list(db.chunks.tokens))
    stream = db.split(split).stream
    return db.tokenizer.texts_without_eod(list(stream.query_tokens(0, stream.n_queries)))


def all_texts(db) -> list[str]:
    """The texts of db's chunks and query chunks."""
    return row_texts(db) + row_texts(db, "train") + row_texts(db, "valid")


def new_texts(source, db) -> list[str]:
    """Sorted: the texts of db's rows that are not texts of source's rows (what a build of db
    reusing source's embeddings must embed), found by text, not by tokens."""
    known = set(all_texts(source))
    return sorted(text for text in all_texts(db) if text not in known)


# A row embedded in another encode call than from scratch (its block's other rows reused, or
# itself reused from another block) is padded to another length: in bf16 its vector moves by a
# few fp16 ulps. Observed (bf16 CPU): knowledge build, max |difference| 6.7e-4 in the 8 rows
# embedded without their block (min cosine 0.99999), the reused rows bitwise equal, neighbours
# identical; edited build, 31 of 303 chunks differ by at most 7.7e-4, one train query's two
# neighbours swapped (a near tie), the same neighbour sets.
MAX_DIFFERENCE = 2e-3
MIN_COSINE = 0.9999
MIN_NEIGHBOUR_OVERLAP = 0.99  # share of each query's neighbours found from scratch; observed 1.0


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    ours, theirs = ours.astype(np.float32), theirs.astype(np.float32)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= MAX_DIFFERENCE
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    assert ((ours * theirs).sum(1) / norms).min() >= MIN_COSINE


def assert_same_results(ours, theirs) -> None:
    """Embeddings, query embeddings and neighbours within the tolerances above."""
    assert_close(ours.embeddings, theirs.embeddings)
    for split in ("train", "valid"):
        assert_close(ours.split(split).query_embeddings, theirs.split(split).query_embeddings)
        ids, their_ids = ours.neighbours(split)[0], theirs.neighbours(split)[0]
        overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ids, their_ids)])
        assert overlap >= MIN_NEIGHBOUR_OVERLAP


def test_knowledge_build_reuses_the_strict_embeddings(tmp_path, tmp_path_factory, monkeypatch,
                                                      embedded):
    base = tmp_path_factory.getbasetemp()
    strict = open_db(reference_db(base))
    embedded.clear()  # the reference database's own texts, when this test built it
    out = tmp_path / "knowledge"
    # Interrupted in the embed stage and resumed: the reuse is per block, like the embedding.
    monkeypatch.setenv(FAIL_AT, "embed:1")
    with pytest.raises(InjectedFailure):
        build(out, base, valid_in_db=True, reuse_embeddings=str(strict.root))
    monkeypatch.delenv(FAIL_AT)
    reused = build(out, base, valid_in_db=True, reuse_embeddings=str(strict.root))

    # Only valid documents' chunks were embedded, those not among the strict database's query
    # chunks (the first valid document's chunks are: it starts the valid stream).
    n_valid_chunks = len(reused) - len(strict)
    assert sorted(embedded) == new_texts(strict, reused)
    assert 0 < len(embedded) <= n_valid_chunks
    assert set(embedded) <= set(row_texts(reused)[len(strict):])
    stages = reused.manifest.stages
    assert stages["embed"]["reused_from"] == str(strict.root)
    assert stages["queries.train"]["rows_reused"] == reused.manifest.counts["train_queries"]
    assert stages["queries.valid"]["rows_reused"] == reused.manifest.counts["valid_queries"]
    assert "reuse_embeddings" not in reused.manifest.config

    embedded.clear()
    scratch = build(tmp_path / "scratch", base, valid_in_db=True)
    assert len(embedded) > 3 * n_valid_chunks
    assert_same_results(reused, scratch)
    # The blocks of train rows and every query chunk are the strict build's bytes.
    n_full = len(strict) // CONFIG.block * CONFIG.block
    assert np.array_equal(reused.embeddings[:n_full], scratch.embeddings[:n_full])
    for split in ("train", "valid"):
        assert data_files(reused.root)[f"queries/{split}/embeddings.npy"] == \
            data_files(scratch.root)[f"queries/{split}/embeddings.npy"]


def test_edited_build_embeds_only_the_edited_documents(tmp_path, tmp_path_factory, embedded):
    base = tmp_path_factory.getbasetemp()
    strict = open_db(reference_db(base))
    embedded.clear()  # the reference database's own texts, when this test built it
    edited = build(tmp_path / "edited", base, edits=EDITS, reuse_embeddings=str(strict.root))

    assert sorted(embedded) == new_texts(strict, edited)
    # The re-embedded chunks are of edited documents (chunks are cut per document); the train
    # query chunks after the first edit that changed a token count are new rows (they are cut
    # from the stream at multiples of m), the valid ones are all reused.
    train = [documents()[i] for i in edited.split("train").stream.doc_index]
    changed = [doc for doc in apply_edits(train, EDITS) if "geyser" in doc]
    chunks = set(embedded) & set(row_texts(edited))
    assert changed and 0 < len(chunks) < len(edited) / 2
    assert all(any(text in doc for doc in changed) for text in chunks)
    assert not set(embedded) & set(row_texts(edited, "valid"))

    embedded.clear()
    scratch = build(tmp_path / "scratch", base, edits=EDITS)
    assert_same_results(edited, scratch)


@pytest.mark.parametrize("field, value, message", [
    ("chunk_size", 32, "its chunk_size is 32, this build's 64"),
    ("tokenizer", "0" * 64, "its tokenizer differs"),
    ("embedder", "someone/else", "its embedder name is 'someone/else'"),
    ("precision", "int8", "its embedder precision is 'int8'"),  # this build's: the default
])
def test_a_mismatched_source_is_refused(field, value, message, tmp_path, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    source = tmp_path / "source"
    shutil.copytree(reference_db(base), source)
    manifest = json.loads((source / "manifest.json").read_text())
    if field == "chunk_size":
        manifest["config"]["chunk_size"] = value
    elif field == "tokenizer":
        manifest["components"]["tokenizer"]["sha256"] = value
    else:
        manifest["components"]["embedder"][{"embedder": "name", "precision": "precision"}[field]] = value
    (source / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "db"
    expected = re.escape(f"cannot reuse embeddings of {source}: {message}")
    with pytest.raises(DatabaseError, match=expected):
        build(out, base, valid_in_db=True, reuse_embeddings=str(source))
    assert not out.exists()
