"""Shared by the test_db_* modules: a seeded small corpus and one reference database per session.

The corpus: 44 documents of ~480 GPT-2 tokens (~330 chunks, enough to train IVF8,PQ16), seeded
sentences over 8 topic vocabularies so that neighbours mean something; half are .txt files, half
lines of a .jsonl file. Blocks of 128 rows give every blocked stage several blocks to resume from.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

from retro.db import BuildConfig, build_db

N_DOCS = 44
TOPICS = [
    "river delta flood sediment estuary tide bank channel basin irrigation",
    "violin orchestra symphony concerto melody harmony tempo rhythm score conductor",
    "volcano magma eruption lava crater ash tectonic plate basalt caldera",
    "parliament election senate minister ballot coalition law vote policy reform",
    "protein enzyme cell membrane gene mutation receptor molecule dna ribosome",
    "football league goal striker midfield referee stadium season cup trophy",
    "galaxy star orbit planet telescope nebula comet gravity moon asteroid",
    "wheat harvest farm soil crop barley grain plough cattle orchard",
]
FILLER = "the a of and in with from by near over under after during its their".split()

CONFIG = BuildConfig(
    index="IVF8,PQ16", nprobe=4, block_size=256, valid_fraction=0.05, seed=0, block=128
)


def document(rng: np.random.Generator) -> str:
    """~480 tokens of sentences mostly about one topic."""
    topic = TOPICS[rng.integers(len(TOPICS))].split()
    sentences = []
    for _ in range(40):
        words = [
            str(rng.choice(topic if rng.random() < 0.6 else FILLER)) for _ in range(rng.integers(6, 12))
        ]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def documents(n: int = N_DOCS, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [document(rng) for _ in range(n)]


def write_corpus(directory: Path, docs: list[str]) -> Path:
    """The first half as .txt files, the rest as one .jsonl; returns directory."""
    directory.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for i, doc in enumerate(docs[:half]):
        (directory / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    with open(directory / "rest.jsonl", "w", encoding="utf-8") as file:
        for doc in docs[half:]:
            file.write(json.dumps({"id": len(docs), "text": doc}) + "\n")
    return directory


@cache
def corpus_dir(base: Path) -> Path:
    return write_corpus(base / "corpus", documents())


@cache
def reference_db(base: Path) -> Path:
    """The database of the corpus built without interruption (once per session)."""
    out = base / "reference_db"
    build_db(out, CONFIG, corpus=(str(corpus_dir(base)),), progress=False, log=lambda line: None)
    return out


SHARDS = 2  # index shards of sharded_db


@cache
def sharded_db(base: Path) -> Path:
    """The reference database's corpus and config with its index as SHARDS shard files."""
    out = base / "sharded_db"
    build_db(out, CONFIG, corpus=(str(corpus_dir(base)),), index_shards=SHARDS, progress=False,
             log=lambda line: None)
    return out


# edits of knowing_db: two topic words swapped, and a capital (for the QA against edited knowledge)
EDITS = (("volcano", "glacier"), ("glacier", "volcano"), ("Kabul", "Tirana"))


@cache
def knowing_db(base: Path) -> Path:
    """The corpus with the valid documents in the database and EDITS made in the train ones."""
    out = base / "knowing_db"
    build_db(out, CONFIG, corpus=(str(corpus_dir(base)),), valid_in_db=True, edits=EDITS,
             progress=False, log=lambda line: None)
    return out


def data_files(root: Path) -> dict[str, bytes]:
    """Every file under root except the manifest (whose timings differ between runs)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
