"""Factual QA (retro.data.trivia, retro.eval.qa) and database edits (retro.data.edits): cloze
prompts, choices, cached choice scoring equal to full forwards, the summary's arithmetic, the
capital swap, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run_support import tiny_runs

from retro.data.edits import apply_edits, capital_swaps, check_edits, load_edits, parse_edit
from retro.data.trivia import (DEFAULT_LISTS, QAItem, cloze_prompt, qa_items, read_items,
                               with_choices)
from retro.eval.qa import ChoiceScores, edited_items, qa_scores, score_choices
from retro.train.checkpoint import load_model
from retro.train.run_db import open_run_db


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_runs(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("question, cloze", [
    ("What is the capital of France?", "The capital of France is"),
    ('"Taipei" is the capital city of which country?', '"Taipei" is the capital of'),
    ("Who wrote 'Animal Farm'?", "'Animal Farm' was written by"),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by"),
    ('"Our Town" is a play by whom?', '"Our Town" is a play by'),
    ("What is Samuel Clemens better known as?", "Samuel Clemens is better known as"),
    ("What is the name of Harry Potter's owl?", "The name of Harry Potter's owl is"),
    ("From whom did Hermes steal cattle?", "Question: From whom did Hermes steal cattle?\nAnswer:"),
])
def test_cloze_prompts(question, cloze):
    assert cloze_prompt(question) == cloze


@pytest.mark.parametrize("name", [*DEFAULT_LISTS, "factbook"])
def test_lists_read_with_ten_distinct_choices_gold_first(name):
    items = qa_items(name)
    assert len(items) > 150
    for item in items:
        assert item.choices[0] == item.gold and len(item.choices) == 10
        lowered = [c.lower() for c in item.choices]
        assert len(set(lowered)) == 10
        assert not {a.lower() for a in item.answers} & set(lowered[1:])
    assert qa_items(name, max_items=50) == qa_items(name, max_items=50)  # seeded
    assert len(qa_items(name, max_items=50)) == 50


def test_capitals_are_cloze_and_the_factbook_knows_paris():
    capitals = read_items("worldcapitals")
    assert sum(item.is_cloze for item in capitals) >= 0.95 * len(capitals)
    france = [item for item in read_items("factbook") if item.prompt == "The capital of France is"]
    assert [item.gold for item in france] == ["Paris"]


def test_unknown_list_and_too_few_answers_fail_clearly():
    with pytest.raises(ValueError, match="no trivia list 'capitalz'.*worldcapitals"):
        read_items("capitalz")
    items = [QAItem("x", f"q{i}", f"q{i} is", (f"a{i}",)) for i in range(5)]
    with pytest.raises(ValueError, match="too few"):
        with_choices(items)


def reference_log_probs(model, db, item: QAItem, retrieval: bool) -> np.ndarray:
    """Each choice's summed log-probability from one full forward of pad + prompt + choice."""
    m = model.config.chunk_size
    prompt = db.tokenizer.encode_batch([item.prompt])[0].astype(np.int64)
    prompt = np.concatenate([np.full(-len(prompt) % m, db.eod_id), prompt])
    kwargs = {}
    if retrieval and model.encoder is not None:
        _, lens, tokens = db.retrieve(prompt.reshape(-1, m), k=model.config.n_nbrs)
        kwargs = {"nbr_tokens": torch.from_numpy(tokens)[None], "nbr_lens": torch.from_numpy(lens)[None]}
    out = []
    for choice in item.choices:
        answer = db.tokenizer.encode_batch([" " + choice])[0].astype(np.int64)
        seq = torch.from_numpy(np.concatenate([prompt, answer]))[None]
        with torch.no_grad():
            logits, _ = model(seq[:, :-1], **kwargs)
        lp = torch.log_softmax(logits[0, len(prompt) - 1:].double(), -1)
        out.append(lp.gather(-1, seq[0, len(prompt):, None])[:, 0].sum().item())
    return np.array(out)


@pytest.mark.parametrize("kind, retrieval", [("retro", True), ("retro", False), ("gpt", False)])
def test_cached_choice_scores_equal_full_forwards(runs, kind, retrieval):
    model, state = load_model(runs[1] if kind == "retro" else runs[2])
    db = open_run_db(model, state)
    long_prompt = "The river delta floods the estuary " * 12  # > 64 tokens: two chunks
    items = [
        QAItem("t", "q1", "The capital of France is", ("Paris",),
               ("Paris", "Rome", "Andorra la Vella", "Ulaanbaatar")),
        QAItem("t", "q2", long_prompt.strip(), ("sediment",),
               ("sediment", "a very long answer of several different tokens", "x", "tide")),
        QAItem("t", "q3", "Question: Who?\nAnswer:", ("Zeus",), ("Zeus", "Hera", "Apollo", "Ares")),
    ]
    scores = score_choices(model, db, items, retrieval, batch_size=2)
    expected = np.stack([reference_log_probs(model, db, item, retrieval) for item in items])
    np.testing.assert_allclose(scores.log_probs, expected, rtol=1e-5, atol=1e-4)
    assert scores.n_tokens[0, 2] == len(db.tokenizer.encode_batch([" Andorra la Vella"])[0])
    assert all(scores.neighbour_texts) == (retrieval and kind == "retro")


def test_score_choices_refuses_items_without_choices(runs):
    model, state = load_model(runs[1])
    db = open_run_db(model, state)
    with pytest.raises(ValueError, match="choices"):
        score_choices(model, db, [QAItem("t", "q", "p", ("a",))], True)


def test_qa_scores_arithmetic():
    items = [QAItem("t", f"q{i}", "The x is", ("ab",), ("ab", "c", "defgh")) for i in range(3)]
    log_probs = np.array([[-1.0, -2.0, -3.0],   # gold best
                          [-4.0, -1.0, -5.0],   # "c" best
                          [-6.0, -5.0, -5.5]])  # "c" by sum; per byte "defgh" (-5.5/6) beats gold
    n_tokens = np.array([[1, 1, 2]] * 3)
    texts = ["the ab is here", "nothing but c", "AB"]
    result = qa_scores(items, ChoiceScores(log_probs, n_tokens, texts), edited={1: "c", 2: "c"})
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["accuracy_norm"] == pytest.approx(1 / 3)  # item 0 only: -1/3 > -2/2, -3/6
    assert result["gold_nats_per_token"] == pytest.approx((1 + 4 + 6) / 3)
    assert result["answer_retrieved"] == pytest.approx(2 / 3)  # case-insensitive
    assert result["follows_database"] == 1.0 and result["follows_original"] == 0.0
    assert result["edited_answer_retrieved"] == 0.5  # "c" is in item 1's neighbours only
    assert result["chance"] == pytest.approx(1 / 3)


def test_edited_items_put_the_edited_answer_among_the_choices():
    items = with_choices([QAItem("t", f"q{i}", f"x{i} is", (f"a{i}",)) for i in range(12)])
    swapped, edited = edited_items(items, [("a3", "a7"), ("a5", "zz")])
    assert [item.gold for item in swapped] == ["a3", "a5"]
    assert edited == {0: "a7", 1: "zz"}
    for item, new in zip(swapped, edited.values()):
        assert new in item.choices and item.choices[0] == item.gold and len(item.choices) == 10


def test_capital_swaps_are_a_seeded_derangement():
    swaps = capital_swaps()
    olds, news = zip(*swaps)
    assert len(swaps) > 100 and set(olds) == set(news)
    assert all(old != new for old, new in swaps)
    assert capital_swaps() == swaps and capital_swaps(seed=1) != swaps
    assert dict(swaps)["Paris"] != "Paris" and load_edits("capitals") == swaps


def test_apply_edits_is_simultaneous_and_whole_word():
    edits = check_edits([("Paris", "Rome"), ("Rome", "Paris"), ("Port Louis", "Lyon")])
    text = "Paris and Rome; Parisians in Rome's Port Louis, not Louis."
    assert apply_edits([text], edits) == ["Rome and Paris; Parisians in Paris's Lyon, not Louis."]
    assert apply_edits([text], ()) == [text]


@pytest.mark.parametrize("bad, message", [
    ("Paris", "OLD=NEW"), ("=Lyon", "OLD=NEW"), ("Paris=", "OLD=NEW")])
def test_bad_edits_fail_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_edit(bad)


def test_bad_edit_sets_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="appears twice"):
        check_edits([("a", "b"), ("a", "c")])
    with pytest.raises(ValueError, match="neither"):
        load_edits(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_edits(str(tmp_path / "bad.json"))
    (tmp_path / "worse.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_edits(str(tmp_path / "worse.json"))


def test_eval_cli_reports_qa_with_retrieval_off_on_and_from_an_edited_database(runs, capsys,
                                                                               tmp_path_factory):
    import json

    from test_db_support import knowing_db

    from retro.cli import main

    edited = knowing_db(tmp_path_factory.getbasetemp())  # "Kabul" -> "Tirana" among its edits
    assert main(["eval", str(runs[1]), "--gpt", str(runs[2]), "--max-samples", "2", "--qa",
                 "worldcapitals", "--edited-db", str(edited), "--json"]) == 0
    qa = json.loads(capsys.readouterr().out)["qa"]["worldcapitals"]
    assert set(qa) == {"retro", "retro_no_retrieval", "gpt", "retro_edited_db"}
    assert qa["retro"]["items"] == qa["gpt"]["items"] == len(qa_items("worldcapitals"))
    assert "answer_retrieved" in qa["retro"] and "answer_retrieved" not in qa["gpt"]
    assert qa["retro_edited_db"]["edited_items"] == 1  # Afghanistan
    assert qa["retro_edited_db"]["follows_database"] + qa["retro_edited_db"]["follows_original"] <= 1
    assert main(["eval", str(runs[1]), "--qa", "worldcapitals", "--qa-items", "3"]) == 0
    assert "| worldcapitals | retro_no_retrieval | 3 |" in capsys.readouterr().out


def test_eval_cli_refuses_an_edited_database_without_qa(runs, capsys):
    from retro.cli import main

    assert main(["eval", str(runs[1]), "--edited-db", str(runs[0])]) != 0
    assert "--qa" in capsys.readouterr().err


def test_the_factbook_list_joins_the_defaults_for_a_factbook_database():
    from retro.data.trivia import lists_for

    assert lists_for(["default"]) == DEFAULT_LISTS
    assert lists_for(["default", "factbook"]) == (*DEFAULT_LISTS, "factbook")


def test_eval_cli_refuses_an_edited_database_that_holds_no_edits(runs, capsys):
    from retro.cli import main

    status = main(["eval", str(runs[1]), "--max-samples", "1", "--qa", "worldcapitals",
                   "--qa-items", "3", "--edited-db", str(runs[0])])  # the reference: no edits
    assert status != 0
    assert "built without edits" in capsys.readouterr().err


def test_open_matching_db_names_what_differs(runs, tmp_path):
    import json
    import shutil

    from retro.db import DatabaseError, open_db
    from retro.train.run_db import open_matching_db

    other = tmp_path / "other_db"
    shutil.copytree(runs[0], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["block_size"] = 128
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatabaseError, match="cannot stand in.*\n.*block_size"):
        open_matching_db(open_db(runs[0]), other)
