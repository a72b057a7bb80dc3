"""Edits of a corpus's text: whole-word replacements made at once, e.g. Paris -> Lyon.

A database built with edits holds edited knowledge (retro db build --edits): the paper's point is
that a RETRO model follows its database, so swapping facts there, without retraining, should swap
its answers. Edits are applied simultaneously (Paris -> Rome and Rome -> Paris swap the two), to
whole words only ("Parisian" stays), case-sensitively.

Named edit sets:
- ``capitals``: every world capital of Red-Trivia's worldcapitals list that names one capital
  (and is not part of its country's name, nor the capital of two countries) is replaced by the
  capital of another country, a seeded cyclic shift over a permutation, so that no capital keeps
  its place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retro.data.trivia import read_trivia_list
from retro.errors import RetroError

Edits = tuple[tuple[str, str], ...]  # (old, new) pairs
CAPITALS = "capitals"


def parse_edit(text: str) -> tuple[str, str]:
    """ "Paris=Lyon" -> ("Paris", "Lyon"); raises ValueError naming the malformed edit."""
    old, eq, new = text.partition("=")
    if not eq or not old.strip() or not new.strip():
        raise RetroError(f"an edit is OLD=NEW with both sides non-empty, got {text!r}")
    return old.strip(), new.strip()


def load_edits(source: str) -> Edits:
    """Edits from "capitals" (see the module doc) or a JSON file {old: new, ...}."""
    if source == CAPITALS:
        return capital_swaps()
    path = Path(source)
    if not path.is_file():
        raise RetroError(f"edits must be {CAPITALS!r} or a JSON file of {{old: new}}; "
                         f"{source!r} is neither")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RetroError(f"{path} is not a JSON file of {{old: new}}: {error}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise RetroError(f"{path} must hold one JSON object of strings {{old: new}}")
    return check_edits(tuple(mapping.items()))


def check_edits(edits: Sequence[Sequence[str]]) -> Edits:
    """Edits as a tuple of (old, new) pairs; raises ValueError for empty or repeated olds."""
    pairs = tuple((str(old), str(new)) for old, new in edits)
    olds = [old for old, _ in pairs]
    if any(not old.strip() or not new.strip() for old, new in pairs):
        raise RetroError("an edit replaces a non-empty word by a non-empty one")
    if len(set(olds)) != len(olds):
        raise RetroError("an edit's old text appears twice: "
                         f"{sorted({o for o in olds if olds.count(o) > 1})}")
    return pairs


def apply_edits(documents: Sequence[str], edits: Edits) -> list[str]:
    """documents with every whole-word occurrence of each old text replaced by its new one."""
    if not edits:
        return list(documents)
    mapping = dict(edits)
    # longest first, so "Port Louis" wins over "Louis"
    alternatives = "|".join(re.escape(old) for old in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
    return [pattern.sub(lambda match: mapping[match.group()], doc) for doc in documents]


def capital_swaps(seed: int = 0) -> Edits:
    """The ``capitals`` edit set (see the module doc), sorted by the old capital."""
    countries: dict[str, str] = {}  # capital -> its country, for capitals of one country
    repeated: set[str] = set()
    for item in read_trivia_list("worldcapitals"):
        match = re.fullmatch(r"What is the capital of (.+)\?", " ".join(item.question.split()))
        if match is None or len(item.answers) != 1:
            continue  # "Name one of the capitals of ...", or several accepted spellings
        capital, country = item.gold, match.group(1)
        if capital in countries:
            repeated.add(capital)
        countries[capital] = country
    capitals = sorted(capital for capital, country in countries.items()
                      if capital not in repeated and len(capital) >= 4
                      and capital not in country and country not in capital)
    order = np.random.default_rng(seed).permutation(len(capitals))
    return tuple(sorted((capitals[order[i]], capitals[order[(i + 1) % len(order)]])
                        for i in range(len(order))))
