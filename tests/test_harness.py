"""retro.eval.harness: the lm-evaluation-harness adapter against retro's own evaluation (the QA
log-likelihoods of retro.eval.qa, the per-token losses of retro.eval.losses, generation), on a
one-step RETRO run over the reference database of test_db_support; then lm_eval itself on the
local tasks of tests/data/harness (when lm_eval is installed), in Python and with lm_eval's own
command line (the model type registered by the wheel's import hook, tests/test_lm_eval_hook.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_db_support import reference_db

from retro.data.trivia import QAItem
from retro.errors import RetroError
from retro.eval.harness import RetroLM
from retro.eval.losses import token_losses
from retro.eval.qa import qa_scores, score_choices
from retro.generation.generator import generate
from retro.train import TrainConfig, train

DATA = Path(__file__).parent / "data" / "harness"
# the import hook's .pth file, installed into site-packages by the wheel
PTH = Path(__file__).parents[1] / "python" / "retro_lm_eval_hook.pth"
MODEL = dict(block_size=256, n_layer=2, n_head=2, n_embd=64, cca_layers=(2,))


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    return reference_db(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def retro_run(db_dir, tmp_path_factory):
    return train(TrainConfig(db=db_dir, out=tmp_path_factory.mktemp("harness") / "run",
                             model="retro", max_iters=1, model_args=MODEL, batch_size=2,
                             eval_batches=1, progress=False, threads=1))


@pytest.fixture(scope="module")
def lm(retro_run):
    return RetroLM(run=str(retro_run), batch_size=4)


def qa_items() -> list[QAItem]:
    rows = [json.loads(line) for line in (DATA / "topics_qa.jsonl").read_text().splitlines()]
    assert all(row["gold"] == 0 for row in rows)  # QAItem: gold first
    return [QAItem("topics", row["prompt"], row["prompt"], (row["choices"][0],),
                   tuple(row["choices"])) for row in rows]


def texts() -> list[str]:
    """The rolling task's documents, and one of three windows (529 tokens)."""
    lines = (DATA / "topics_text.jsonl").read_text().splitlines()
    rows = [json.loads(line)["text"] for line in lines]
    return rows + [" ".join(rows * 12)]


@pytest.mark.parametrize("retrieval", [True, False])
def test_loglikelihood_equals_retros_qa_scores(lm, retrieval):
    items = qa_items()
    lm.retrieving = retrieval
    try:
        ours = lm.loglikelihood([(item.prompt, " " + choice) for item in items
                                 for choice in item.choices])
        # a trailing space of the context moves to the continuation
        spaced = lm.loglikelihood([(items[0].prompt + " ", items[0].choices[0])])[0]
    finally:
        lm.retrieving = True
    theirs = score_choices(lm.model, lm.db, items, retrieval=retrieval)
    log_probs = np.array([lp for lp, _ in ours]).reshape(theirs.log_probs.shape)
    # a whole forward against retro's decoding cache: observed 9.5e-7 at most
    np.testing.assert_allclose(log_probs, theirs.log_probs, rtol=0, atol=1e-4)
    assert spaced == ours[0]


def test_loglikelihood_rolling_equals_retros_token_losses(lm):
    eod, m = lm.db.eod_id, lm.m
    expected = []
    for text in texts():
        sequence = np.concatenate([[eod], lm.db.tokenizer.encode_batch([text])[0]])
        total = 0.0
        for start in range(0, len(sequence) - 1, 256):  # windows of block_size targets
            window = sequence[start:start + 257][None]  # (1, T + 1)
            n_chunks = (window.shape[1] - 1) // m
            _, lens, nbrs = lm.db.retrieve(window[0, :n_chunks * m].reshape(-1, m), k=2)
            neighbours = (nbrs[None], lens[None]) if n_chunks else None
            total -= token_losses(lm.model, window, neighbours).sum()
        expected.append(total)
    assert len(sequence) > 2 * 256 + 1  # the long text spans three windows
    # observed 9.5e-7 at most, on sums of up to 5731 nats
    np.testing.assert_allclose(lm.loglikelihood_rolling([(t,) for t in texts()]), expected,
                               rtol=1e-6, atol=1e-4)


def test_generate_until_is_retro_generation_cut_at_the_stop_string(lm):
    prompt = "The volcano erupted and lava"
    tokens = lm.db.tokenizer.encode_batch([prompt])[0]
    generated = list(generate(lm.model, lm.db, tokens, 12, temperature=0.0))
    text = lm.db.tokenizer.decode_batch([[t for t in generated if t != lm.db.eod_id]])[0]
    stop = text[5:7]  # a stop string the text contains
    out = lm.generate_until([(prompt, {"until": [stop], "max_gen_toks": 12}),
                             (prompt, {"until": [], "max_gen_toks": 12})])
    assert out[0] == text.split(stop)[0] and len(out[0]) < len(text)
    if lm.db.eod_id not in generated:
        assert out[1] == text


def write_tasks(directory: Path) -> None:
    """The local tasks: multiple choice over topics_qa.jsonl, rolling over topics_text.jsonl."""
    common = "dataset_path: json\ntest_split: test\n"
    (directory / "retro_topics_qa.yaml").write_text(
        f"task: retro_topics_qa\n{common}dataset_kwargs:\n  data_files:\n"
        f"    test: {DATA / 'topics_qa.jsonl'}\noutput_type: multiple_choice\n"
        "doc_to_text: prompt\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n")
    (directory / "retro_topics_text.yaml").write_text(
        f"task: retro_topics_text\n{common}dataset_kwargs:\n  data_files:\n"
        f"    test: {DATA / 'topics_text.jsonl'}\noutput_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")


def test_lm_eval_runs_local_tasks_with_the_retro_model_type(lm, retro_run, db_dir, tmp_path,
                                                            monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from datasets import config as datasets_config
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    # HF datasets reads the local task files; offline, it sends nothing (not even its load count)
    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", True)

    assert get_model("retro") is RetroLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm_eval's own model types stay registered
    write_tasks(tmp_path)
    result = lm_eval.simple_evaluate(
        model="retro", model_args=f"run={retro_run},db={db_dir}", batch_size=4,
        tasks=["retro_topics_qa", "retro_topics_text"],
        task_manager=TaskManager(include_path=str(tmp_path)))["results"]
    assert_retros_scores(result, lm)


# lm_eval's own command in a fresh process whose site directory holds retro_lm_eval_hook.pth, as an
# installed wheel's site-packages does: the .pth line runs as at start-up (site.addsitedir)
STOCK_LM_EVAL = ["-c", "import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); "
                 "runpy.run_module('lm_eval', run_name='__main__', alter_sys=True)",
                 str(PTH.parent)]


@pytest.mark.parametrize("command, hook_on", [(STOCK_LM_EVAL, True),
                                              (["-m", "retro.eval.harness"], False)],
                         ids=["lm_eval", "retro-lm-eval"])
def test_lm_eval_command_lines_run_the_retro_model_type(lm, retro_run, db_dir, tmp_path, command,
                                                        hook_on):
    """``lm_eval --model retro ...``: nothing imports retro.eval.harness before lm_eval asks for
    the model type, the hook registers it; ``retro-lm-eval`` (python -m retro.eval.harness)
    registers it by import, the hook off."""
    pytest.importorskip("lm_eval")
    write_tasks(tmp_path)
    out = tmp_path / "out"
    arguments = ["--model", "retro", "--model_args", f"run={retro_run},db={db_dir}",
                 "--device", "cpu", "--batch_size", "4",
                 "--tasks", "retro_topics_qa,retro_topics_text", "--include_path", str(tmp_path),
                 "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "RETRO_NO_LM_EVAL_HOOK": "" if hook_on else "1"}
    process = subprocess.run([sys.executable, *command, *arguments], env=env, capture_output=True,
                             text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    (results,) = out.rglob("results_*.json")
    assert_retros_scores(json.loads(results.read_text())["results"], lm)


def assert_retros_scores(result: dict, lm: RetroLM) -> None:
    """lm_eval's results of the local tasks are retro's own: the QA accuracy of retro.eval.qa,
    the word perplexity of RetroLM's rolling log-likelihoods."""
    items = qa_items()
    accuracy = qa_scores(items, score_choices(lm.model, lm.db, items, retrieval=True))["accuracy"]
    assert result["retro_topics_qa"]["acc,none"] == accuracy
    documents = texts()[:2]
    words = sum(len(text.split()) for text in documents)
    log_prob = sum(lm.loglikelihood_rolling([(text,) for text in documents]))
    assert result["retro_topics_text"]["word_perplexity,none"] == \
        pytest.approx(math.exp(-log_prob / words), rel=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_a_gpu_is_refused_with_what_to_pass(retro_run):
    # lm_eval's command line passes device cuda:0 unless told otherwise
    with pytest.raises(RetroError, match="torch sees no CUDA device: pass --device cpu"):
        RetroLM(run=str(retro_run), device="cuda:0")
