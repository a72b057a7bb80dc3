"""retro db end to end on a small corpus: files, chunks, neighbours, retrieval, query sets, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_db_support import (
    CONFIG, corpus_dir, data_files, documents, reference_db, sharded_db, write_corpus,
)

import retro.cli
from retro.data import load_tokenizer
from retro.db import open_db, open_query_set, query_db
from retro.db.info import neighbour_recall
from retro.db.retrieval import doc_ranges_to_ids
from retro.db.stages import stage_order


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return open_db(reference_db(tmp_path_factory.getbasetemp()))


def test_manifest_lists_every_file_with_its_checksum(db):
    manifest = json.loads((db.root / "manifest.json").read_text())
    files = data_files(db.root)
    assert set(files) == set(manifest["files"])  # nothing partial or temporary left behind
    for path, entry in manifest["files"].items():
        assert db.manifest.file_is_valid(path) and entry["bytes"] == len(files[path]) > 0
    assert sorted(manifest["stages"], key=stage_order) == [
        "tokenize", "chunks", "embed", "index",
        "queries.train", "queries.valid", "neighbours.train", "neighbours.valid",
    ]
    assert manifest["components"]["embedder"] == {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "dim": 384,
        "precision": manifest["components"]["embedder"]["precision"],
    }
    assert manifest["components"]["index"] == {"spec": "IVF8,PQ16", "nprobe": 4, "k_factor": 4}
    counts = manifest["counts"]
    assert counts["train_docs"] + counts["valid_docs"] == len(documents())
    assert counts["valid_docs"] == 2  # round(0.05 * 44)
    assert counts["chunks"] == len(db) > 256
    for split in ("train", "valid"):
        ids, lengths = db.neighbours(split)
        embeddings = db.split(split).query_embeddings
        assert ids.shape == lengths.shape == (counts[f"{split}_queries"], CONFIG.n_nbrs)
        assert embeddings.shape == (counts[f"{split}_queries"], 384)
        assert embeddings.dtype == np.float16 and ids.dtype == np.int64 and lengths.dtype == np.int32
        assert counts[f"{split}_queries"] == counts[f"{split}_samples"] * CONFIG.block_size // 64
    norms = np.linalg.norm(db.embeddings.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)


def test_chunks_rebuild_the_train_documents_and_only_them(db):
    tokenizer = load_tokenizer()
    docs = documents()
    train = db.split("train").stream.doc_index
    valid = db.split("valid").stream.doc_index
    assert sorted([*train, *valid]) == list(range(len(docs)))
    chunks = db.chunks
    assert np.all(np.diff(chunks.doc_ids) >= 0)
    for doc_id, corpus_index in enumerate(train):
        first, last = chunks.doc_offsets[doc_id], chunks.doc_offsets[doc_id + 1]
        assert np.all(chunks.doc_ids[first:last] == doc_id)
        rebuilt = np.concatenate([db.chunk_tokens(i) for i in range(first, last)])
        assert np.array_equal(rebuilt, tokenizer.encode_batch([docs[corpus_index]])[0])
        assert np.all(chunks.lengths[first : last - 1] == 64) and 0 < chunks.lengths[last - 1] <= 64
        assert np.all(chunks.tokens[last - 1, chunks.lengths[last - 1] :] == tokenizer.eod_id)
    # The valid documents' text appears in no chunk.
    chunk_texts = {db.chunk_text(i) for i in range(len(db))}
    for corpus_index in valid:
        assert not any(text in docs[corpus_index] for text in chunk_texts if len(text) > 40)


def test_continuation_never_crosses_a_document(db):
    ids = np.arange(len(db))
    continuation = db.chunks.continuation(ids)
    has_next = continuation >= 0
    assert np.all(db.doc_ids[continuation[has_next]] == db.doc_ids[ids[has_next]])
    last_of_doc = db.chunks.doc_offsets[1:] - 1
    assert np.all(continuation[last_of_doc] == -1)
    assert has_next.sum() == len(db) - len(last_of_doc)
    tokens, lengths = db.chunks.neighbour_values(ids)
    assert tokens.shape == (len(db), 128)
    expected = db.chunks.lengths + np.where(has_next, db.chunks.lengths[np.maximum(continuation, 0)], 0)
    assert np.array_equal(lengths, expected)
    for i in (0, int(last_of_doc[0])):
        real = tokens[i, : lengths[i]]
        assert np.all(tokens[i, lengths[i] :] == db.eod_id) and np.all(real != db.eod_id)


def test_neighbours_never_come_from_the_documents_of_the_query_sample(db):
    view = db.split("train")
    ids, lengths = view.neighbours()
    samples = view.sample_of_query()
    for q in range(len(ids)):
        excluded = set(view.sample_doc_ids(samples[q]).tolist())
        found = ids[q][ids[q] >= 0]
        assert not excluded & set(db.doc_ids[found].tolist())
    assert np.all((ids >= 0) == (lengths > 0))
    assert np.mean(ids >= 0) == 1.0  # 40+ documents, a sample spans at most a few
    _, expected_lengths = db.chunks.neighbour_values(np.asarray(ids))
    assert np.array_equal(lengths, expected_lengths)


def test_sample_documents_are_those_with_a_token_in_the_sample(db):
    view = db.split("train")
    offsets = view.stream.doc_offsets
    for j in range(view.stream.n_samples):
        start, stop = j * CONFIG.block_size, (j + 1) * CONFIG.block_size + 1
        docs = view.sample_doc_ids(j)
        assert all(offsets[d] < stop and offsets[d + 1] > start for d in docs)
        assert offsets[docs[0]] <= start and offsets[docs[-1] + 1] >= stop


def test_stored_neighbours_are_what_retrieval_gives(db):
    view = db.split("train")
    rows = np.arange(0, view.stream.n_queries, 7)
    exclude = doc_ranges_to_ids(view.sample_docs[view.sample_of_query()[rows]])
    queries = np.asarray(view.query_embeddings[rows], dtype=np.float32)
    found = db.retrieve_embedded(queries, exclude_doc_ids=exclude)
    ids, lengths = view.neighbours()
    assert np.array_equal(found.ids, ids[rows]) and np.array_equal(found.lengths, lengths[rows])


def test_a_sharded_database_stores_and_retrieves_what_the_one_index_file_does(db, tmp_path_factory):
    sharded = open_db(sharded_db(tmp_path_factory.getbasetemp()))
    assert sorted(p.name for p in (sharded.root / "index.shards").iterdir()) == [
        "shard-00000.ivfpq", "shard-00001.ivfpq", "shards.json"]
    assert not (sharded.root / "index.ivfpq").exists()
    for split in db.splits:
        for ours, theirs in zip(sharded.neighbours(split), db.neighbours(split)):
            assert np.array_equal(ours, theirs)
    view = db.split("valid")
    queries = np.asarray(view.query_embeddings, dtype=np.float32)
    for ours, theirs in zip(sharded.search(queries, 9), db.search(queries, 9)):
        assert np.array_equal(ours, theirs)


def test_retrieve_from_tokens_finds_the_chunk_itself(db):
    chunk_ids = np.arange(0, len(db), 16)
    full = chunk_ids[db.chunks.lengths[chunk_ids] == 64]
    ids, lens, tokens = db.retrieve(np.asarray(db.chunks.tokens[full]), k=3)
    assert ids.shape == lens.shape == (len(full), 3) and tokens.shape == (len(full), 3, 128)
    assert np.mean(ids[:, 0] == full) >= 0.95  # observed 1.0
    # Excluding the chunk's own document removes it and every chunk of that document.
    ids, _, _ = db.retrieve(np.asarray(db.chunks.tokens[full]), k=3, exclude_doc_ids=db.doc_ids[full][:, None])
    assert not np.any(db.doc_ids[ids] == db.doc_ids[full][:, None])
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        db.retrieve(np.zeros((2, 32), dtype=np.int64))


def test_stored_neighbours_match_exact_search(db):
    # IVF8 with nprobe 4 and exact re-ranking; observed 1.0 on train and valid.
    assert neighbour_recall(db, "train") >= 0.95
    assert neighbour_recall(db, "valid") >= 0.95


def test_query_set_for_another_corpus(db, tmp_path):
    corpus = write_corpus(tmp_path / "other", documents(4, seed=7))
    query_set = query_db(db.root, [str(corpus)], tmp_path / "qs", name="eval", block_size=128, progress=False)
    assert query_set.name == "eval" and query_set.database == db.root.resolve()
    ids, lengths = query_set.neighbours()
    assert ids.shape == (query_set.stream.n_queries, CONFIG.n_nbrs) and np.all(ids >= 0)
    again = open_query_set(tmp_path / "qs")
    assert np.array_equal(again.neighbours()[0], ids)
    # Resuming a complete query set redoes nothing and changes nothing.
    before = data_files(tmp_path / "qs")
    query_db(db.root, [str(corpus)], tmp_path / "qs", name="eval", block_size=128, progress=False)
    assert data_files(tmp_path / "qs") == before


def test_cli_info_and_show(db, capsys):
    assert retro.cli.main(["db", "info", str(db.root), "--recall-sample", "50"]) == 0
    out = capsys.readouterr().out
    assert "IVF8,PQ16" in out and "recall@2 of the stored train neighbours" in out
    assert "neighbours.train" in out and "embeddings.npy" in out
    assert retro.cli.main(["db", "show", str(db.root), "--query", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("query 3 of train: sample 0, chunk 3") and "neighbour 2: chunk" in out
    assert retro.cli.main(["db", "show", str(db.root), "--query", "100000"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_python_m_retro_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "retro", "db", "build", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--block-size" in result.stdout


def test_default_corpus_reads_wikipedia_leads():
    from retro.data import read_corpus

    docs = read_corpus(["default"])
    assert len(docs) > 9000 and all(doc.strip() for doc in docs)
