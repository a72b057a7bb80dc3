"""Bad input to retro db: each is one clear error, and nothing built so far changes."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from test_db_support import (
    CONFIG, SHARDS, corpus_dir, data_files, documents, reference_db, sharded_db, write_corpus,
)

import retro.cli
from retro.data import CorpusError, load_tokenizer, read_corpus
from retro.db import BuildConfig, DatabaseError, build_db, open_db, query_db


@pytest.fixture
def db_copy(tmp_path, tmp_path_factory):
    """A copy of the reference database that a test may try to damage."""
    out = tmp_path / "db"
    shutil.copytree(reference_db(tmp_path_factory.getbasetemp()), out)
    return out


def snapshot(root):
    return {**data_files(root), "manifest.json": (root / "manifest.json").read_bytes()}


def test_empty_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("")
    (corpus / "b.txt").write_text("  \n\t ")
    with pytest.raises(CorpusError, match="holds no text"):
        build_db(tmp_path / "db", CONFIG, corpus=(str(corpus),), progress=False)
    assert not (tmp_path / "db").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt, .jsonl, .parquet files in this directory"):
        read_corpus([str(tmp_path / "empty")])


def test_undecodable_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt: not UTF-8 text \(byte 3 is 0xe9\)"):
        read_corpus([str(tmp_path / "latin1.txt")])


def test_jsonl_without_the_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "some text"}) + "\n")
    with pytest.raises(CorpusError, match=r"docs.jsonl:1: no text field 'text' \(found \['body'\]\); name the field with --text-field"):
        read_corpus([str(path)])
    assert read_corpus([str(path)], text_field="body") == ["some text"]
    path.write_text("not json\n")
    with pytest.raises(CorpusError, match="docs.jsonl:1: not a JSON object"):
        read_corpus([str(path)])


def test_unknown_corpus_and_file_type(tmp_path):
    with pytest.raises(CorpusError, match="neither a file, a directory nor one of: default"):
        read_corpus(["wikipedia-fr"])
    (tmp_path / "doc.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="unsupported file type"):
        read_corpus([str(tmp_path / "doc.csv")])


def test_parquet_documents_and_a_missing_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["first document", "", "second one"], "id": [1, 2, 3]}), path)
    assert read_corpus([str(path)], text_field="body") == ["first document", "second one"]
    with pytest.raises(CorpusError, match=r"no column 'text' \(found \['body', 'id'\]\); name the column with --text-field"):
        read_corpus([str(path)])


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow(tmp_path):
    (tmp_path / "docs.parquet").write_bytes(b"PAR1")
    with pytest.raises(CorpusError, match="needs pyarrow"):
        read_corpus([str(tmp_path / "docs.parquet")])


def test_embedder_of_another_dimension(db_copy, tmp_path):
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules (the old path warns)
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:
        from sentence_transformers.models import Dense

    from retro.db.embed import Embedder

    base = Embedder().model
    narrow = SentenceTransformer(modules=[base[0], base[1], Dense(384, 128)], device="cpu")
    narrow.save(str(tmp_path / "narrow"))
    corpus = write_corpus(tmp_path / "other", documents(2, seed=5))
    with pytest.raises(DatabaseError, match=r"gives 128-d vectors but .* holds 384-d embeddings"):
        query_db(db_copy, [str(corpus)], tmp_path / "qs", embedder=str(tmp_path / "narrow"), progress=False)
    assert not (tmp_path / "qs").exists()


def test_manifest_from_a_newer_format(db_copy, tmp_path_factory):
    manifest = json.loads((db_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (db_copy / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(db_copy)
    with pytest.raises(DatabaseError, match="database format 99 is newer than this retro reads"):
        open_db(db_copy)
    with pytest.raises(DatabaseError, match="format 99"):
        build_db(db_copy, CONFIG, corpus=(str(corpus_dir(tmp_path_factory.getbasetemp())),), progress=False)
    assert snapshot(db_copy) == before


def test_resume_with_another_block_size_or_tokenizer(db_copy, tmp_path, tmp_path_factory):
    corpus = (str(corpus_dir(tmp_path_factory.getbasetemp())),)
    before = snapshot(db_copy)
    with pytest.raises(DatabaseError, match=r"block_size: built with 256, asked for 128"):
        build_db(db_copy, CONFIG, corpus=corpus, block_size=128, progress=False)
    tokenizer_json = tmp_path / "tokenizer.json"
    load_tokenizer().backend.save(str(tokenizer_json))
    with pytest.raises(DatabaseError, match=r"tokenizer: built with 'gpt2', asked for '.*tokenizer.json'"):
        build_db(db_copy, CONFIG, corpus=corpus, tokenizer=str(tokenizer_json), progress=False)
    assert snapshot(db_copy) == before


def test_resume_with_another_shard_count(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    sharded = sharded_db(base)
    before = snapshot(sharded)
    with pytest.raises(DatabaseError, match=rf"index_shards: built with {SHARDS}, asked for 3"):
        build_db(sharded, CONFIG, corpus=(str(corpus_dir(base)),), index_shards=3, progress=False)
    with pytest.raises(DatabaseError, match=rf"index_shards: built with {SHARDS}, asked for None"):
        build_db(sharded, CONFIG, corpus=(str(corpus_dir(base)),), progress=False)
    assert snapshot(sharded) == before
    with pytest.raises(ValueError, match="index_shards must be a positive integer, got 0"):
        BuildConfig(index_shards=0)


def test_open_db_says_which_expectation_fails(db_copy):
    with pytest.raises(DatabaseError) as error:
        open_db(db_copy, chunk_size=32, block_size=2048, tokenizer="gpt2")
    message = str(error.value)
    assert "chunk_size: the database has 64, expected 32" in message
    assert "block_size: the database has 256, expected 2048" in message
    assert "tokenizer" not in message
    assert open_db(db_copy, chunk_size=64, block_size=256, embedder="default").n_nbrs == 2


def test_incomplete_database_is_refused(db_copy):
    manifest = json.loads((db_copy / "manifest.json").read_text())
    del manifest["stages"]["neighbours.train"]
    (db_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatabaseError, match="the 'neighbours.train' stage is not complete"):
        open_db(db_copy)


def test_directory_that_is_not_a_database(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatabaseError, match="not empty and holds no manifest.json; refusing"):
        build_db(tmp_path, CONFIG, corpus=("default",), progress=False)
    with pytest.raises(DatabaseError, match="no manifest.json; not a retro database"):
        open_db(tmp_path)


def test_bad_parameters():
    with pytest.raises(ValueError, match="block_size .100. must be a positive multiple of chunk_size"):
        BuildConfig(block_size=100)
    with pytest.raises(ValueError, match="valid_fraction"):
        BuildConfig(valid_fraction=1.0)
    with pytest.raises(ValueError, match="unsupported index description"):
        from retro.db.indexing import choose_index

        choose_index(1000, 384, "HNSW32")
    with pytest.raises(ValueError, match="needs at least max.nlist, 256. = 1024 chunks"):
        choose_index(1000, 384, "IVF1024,PQ48")


def test_too_few_tokens_for_one_sample(tmp_path):
    corpus = write_corpus(tmp_path / "small", documents(4, seed=1))
    with pytest.raises(DatabaseError, match="too few for one sample"):
        build_db(tmp_path / "db", CONFIG, corpus=(str(corpus),), block_size=4096, progress=False)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "x.txt").write_text(" ")
    status = retro.cli.main(["db", "build", "--corpus", str(corpus), "--out", str(tmp_path / "db"), "--no-progress"])
    assert status == 2
    assert capsys.readouterr().err.startswith("retro: error: corpus")
