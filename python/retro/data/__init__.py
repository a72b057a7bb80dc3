"""Text in, tokens out: corpus readers (packaged defaults, .txt, .jsonl, parquet) and tokenizers."""

from retro.data.corpus import BUILTIN_CORPORA, CorpusError, corpus_fingerprint, read_corpus
from retro.data.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "BUILTIN_CORPORA",
    "CorpusError",
    "Tokenizer",
    "corpus_fingerprint",
    "load_tokenizer",
    "read_corpus",
]
