"""Databases whose documents start chunks (BuildConfig.align_documents).

The streams pad each document's eod with eods to a multiple of m, so every query chunk lies in one
document and is a database chunk: the train queries take the chunks' embeddings (none embedded
twice), a database holding the valid documents retrieves each valid chunk itself, aligned, and the
padding is never a target (training or evaluation).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_db_support import CONFIG, corpus_dir

from retro.db import build_db
from retro.db.chunks import cut_documents
from retro.db.streams import TokenStream, document_lengths, padding_targets, write_stream
from retro.train.data import SampleDataset

EOD = 0


def stream_of(tmp_path, lengths: list[int], m: int, align: int) -> TokenStream:
    rng = np.random.default_rng(len(lengths) * 31 + m)
    docs = [rng.integers(1, 500, n) for n in lengths]
    write_stream(tmp_path, "train", docs, np.arange(len(docs)), EOD, np.dtype(np.int32), align)
    return TokenStream.open(tmp_path, "train", 4 * m, m)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12), m=st.integers(1, 9),
       aligned=st.booleans())
def test_stream_layout_and_document_lengths(tmp_path_factory, lengths, m, aligned):
    stream = stream_of(tmp_path_factory.mktemp("s"), lengths, m, m if aligned else 1)
    spans = np.diff(stream.doc_offsets)
    assert (spans >= np.array(lengths) + 1).all()
    if aligned:
        assert (stream.doc_offsets % m == 0).all() and (spans - np.array(lengths) <= m).all()
    else:
        assert (spans == np.array(lengths) + 1).all()
    assert document_lengths(stream, EOD).tolist() == lengths
    doc_ids, chunk_lengths, starts = cut_documents(stream, EOD)
    assert np.bincount(doc_ids, weights=chunk_lengths, minlength=len(lengths)).tolist() == lengths
    if aligned:
        assert (starts % m == 0).all()
    # the padding targets are exactly the eods after a document's first (an empty document's
    # eod follows the one before it: it counts as padding too)
    tokens = np.asarray(stream.tokens)
    pad = padding_targets(tokens, EOD)
    expected = np.zeros(len(tokens) - 1, dtype=bool)
    for start, n, span in zip(stream.doc_offsets[:-1], lengths, spans):
        expected[start + n: start + span - 1] = True  # targets at stream positions n+1 .. span-1
        if n == 0 and start > 0:
            expected[start - 1] = True
    assert pad.tolist() == expected.tolist()


@pytest.fixture(scope="module")
def aligned_db(tmp_path_factory):
    """The test corpus's database with the valid documents in it, documents aligned."""
    base = tmp_path_factory.mktemp("aligned")
    return build_db(base / "db", CONFIG, corpus=(str(corpus_dir(base)),), valid_in_db=True,
                    align_documents=True, progress=False, log=lambda _: None)


def test_an_aligned_database_reads_its_queries_from_its_chunks(aligned_db):
    db, m = aligned_db, CONFIG.chunk_size
    assert db.manifest.config["align_documents"] is True
    chunk_rows = {row.tobytes() for row in np.asarray(db.chunks.tokens, dtype=np.int64)}
    for split in ("train", "valid"):
        stream = db.split(split).stream
        assert (stream.doc_offsets % m == 0).all()
        queries = stream.query_tokens(0, stream.n_queries).astype(np.int64)
        real = ~(queries == db.eod_id).all(axis=1)  # all-padding rows aside
        assert all(row.tobytes() in chunk_rows for row in queries[real])
        # none was embedded again: every query row came from the chunks' embeddings (but the
        # padding chunk of a document whose eod begins a chunk, which no database chunk holds)
        assert db.manifest.stages[f"queries.{split}"]["rows_reused"] == real.sum()
        np.testing.assert_array_equal(
            np.asarray(db.split(split).query_embeddings)[real],
            np.asarray(db.embeddings)[[db_row(db, row) for row in queries[real]]])
    # the valid documents are in the database: a valid chunk's first neighbour is itself
    view = db.split("valid")
    tokens, lens = view.sample_neighbours(np.arange(view.stream.n_samples), db.chunks, 1)
    queries = view.stream.query_tokens(0, view.stream.n_queries).astype(np.int64)
    own = (tokens[:, :, 0, :m].reshape(-1, m) == queries).all(axis=1)
    assert own[~(queries == db.eod_id).all(axis=1)].mean() > 0.9


def db_row(db, row: np.ndarray) -> int:
    return int(np.flatnonzero((np.asarray(db.chunks.tokens) == row).all(axis=1))[0])


def test_padding_is_no_training_target(aligned_db):
    db = aligned_db
    data = SampleDataset(db.root, "train", with_neighbours=False)
    padded = 0
    for j in range(len(data)):
        sample = db.split("train").stream.sample(j)
        idx, targets = data[j]
        pad = padding_targets(sample, db.eod_id)
        assert (targets[pad] == -1).all() and (targets[~pad] == sample[1:][~pad]).all()
        padded += int(pad.sum())
    assert padded > 0


def test_padding_counts_no_bytes(aligned_db):
    from retro.eval.losses import chunk_bytes

    tokenizer, eod = aligned_db.tokenizer, aligned_db.eod_id
    x, y, z, w = tokenizer.encode_batch(["The river", " delta", " Volcano", " ash"])
    tokens = np.array([[x[0], y[0], eod, eod, eod, z[0], w[0]]], dtype=np.int64)  # T = 6
    n_bytes = chunk_bytes(tokenizer, tokens, chunk_size=3)
    text = [tokenizer.decode_batch([np.array([t])])[0] for t in (y[0], z[0], w[0])]
    # targets: y, eod (the document's end: one byte), eod, eod (padding: none), z, w
    assert n_bytes.sum() == sum(len(t.encode()) for t in text) + 1
