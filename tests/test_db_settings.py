"""Database settings of the evaluation: knowledge in the database (valid documents added) and
edited knowledge (replacements in the database's documents only)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_db_support import CONFIG, EDITS, corpus_dir, documents, knowing_db, reference_db

from retro.data import load_tokenizer
from retro.db import BuildConfig, DatabaseError, build_db, open_db

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return open_db(reference_db(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def knowing(tmp_path_factory):
    return open_db(knowing_db(tmp_path_factory.getbasetemp()))


def test_the_valid_documents_follow_the_train_ones_in_the_chunks(reference, knowing):
    tokenizer = load_tokenizer()
    docs = documents()
    train = knowing.split("train").stream.doc_index
    valid = knowing.split("valid").stream.doc_index
    assert np.array_equal(train, reference.split("train").stream.doc_index)
    chunks = knowing.chunks
    assert len(chunks.doc_offsets) == len(train) + len(valid) + 1
    for doc_id, corpus_index in enumerate(valid, start=len(train)):
        first, last = chunks.doc_offsets[doc_id], chunks.doc_offsets[doc_id + 1]
        assert np.all(chunks.doc_ids[first:last] == doc_id)
        rebuilt = np.concatenate([knowing.chunk_tokens(i) for i in range(first, last)])
        assert np.array_equal(rebuilt, tokenizer.encode_batch([docs[corpus_index]])[0])  # unedited


def test_edits_change_the_train_documents_only(reference, knowing):
    tokenizer = load_tokenizer()
    train_text = tokenizer.decode_batch([knowing.split("train").stream.tokens])[0]
    reference_text = tokenizer.decode_batch([reference.split("train").stream.tokens])[0]
    swapped = re.sub(r"\b(volcano|glacier)\b",
                     lambda match: {"volcano": "glacier", "glacier": "volcano"}[match.group()],
                     reference_text)
    assert "volcano" in reference_text and train_text == swapped != reference_text
    assert np.array_equal(knowing.split("valid").stream.tokens, reference.split("valid").stream.tokens)


def test_valid_chunks_retrieve_valid_documents_only_with_knowledge(reference, knowing):
    n_train_docs = len(knowing.split("train").stream.doc_index)

    def share_from_valid_documents(db) -> float:
        ids, _ = db.neighbours("valid")
        return float(np.mean(db.chunks.doc_ids[ids[:, 0]] >= n_train_docs))

    assert share_from_valid_documents(reference) == 0.0  # strict: valid text is never there
    # query chunks straddle the documents' chunks, and the toy corpus repeats its topics
    assert share_from_valid_documents(knowing) >= 0.5


def test_settings_are_recorded_and_resumed_only_with_the_same_values(tmp_path_factory, reference,
                                                                     knowing):
    assert knowing.config["valid_in_db"] is True
    assert knowing.config["edits"] == [list(pair) for pair in EDITS]
    assert "valid_in_db" not in reference.config and "edits" not in reference.config
    base = tmp_path_factory.getbasetemp()
    corpus = (str(corpus_dir(base)),)
    build_db(knowing.root, CONFIG, corpus=corpus, valid_in_db=True, edits=EDITS, progress=False,
             log=lambda line: None)  # complete: every stage skipped
    with pytest.raises(DatabaseError, match="edits"):
        build_db(knowing.root, CONFIG, corpus=corpus, valid_in_db=True, progress=False)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="valid_fraction is 0"):
        BuildConfig(valid_in_db=True, valid_fraction=0.0)
    with pytest.raises(ValueError, match="appears twice"):
        BuildConfig(edits=(("a", "b"), ("a", "c")))
