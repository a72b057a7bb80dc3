"""Factbook section sources ("factbook:government,geography") and a BPE trained on a corpus."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")

from retro.data.corpus import CorpusError, read_corpus  # noqa: E402
from retro.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from retro.errors import RetroError  # noqa: E402


def test_factbook_sections_are_a_subset():
    government = read_corpus(["factbook:government"])
    both = read_corpus(["factbook:Government,geography"])
    assert government and all(doc.split("\n")[0].endswith(". Government.") for doc in government)
    assert set(government) < set(both) <= set(read_corpus(["factbook"]))
    assert {doc.split("\n")[0].rsplit(". ", 1)[1] for doc in both} == {"Government.", "Geography."}
    with pytest.raises(CorpusError, match="no section \\['cuisine'\\]"):
        read_corpus(["factbook:cuisine"])


def test_trained_tokenizer_round_trips_and_is_deterministic(tmp_path):
    docs = read_corpus(["factbook:geography"])
    tok = train_tokenizer(docs, 1000, tmp_path / "a" / "tokenizer.json")
    again = train_tokenizer(docs, 1000, tmp_path / "b.json")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert tok.vocab_size == 1000 and tok.eod_id == 0 and again.sha256 == tok.sha256
    text = "The capital of Chad is N'Djamena; coordinates 12 06 N, 15 02 E."
    ids = tok.encode_batch([text])[0]
    assert tok.decode_batch([ids]) == [text] and ids.max() < 1000
    assert load_tokenizer(str(tmp_path / "b.json")).sha256 == tok.sha256
    with pytest.raises(RetroError, match="vocab_size must cover"):
        train_tokenizer(docs, 100, tmp_path / "c.json")
    with pytest.raises(RetroError, match="no documents"):
        train_tokenizer([], 1000, tmp_path / "c.json")
