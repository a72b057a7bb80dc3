"""The embedder's names: 'default' (shipped, offline), a model directory, a hub id; loading never
sets HF_HUB_OFFLINE for the process (other Hugging Face code in it keeps its settings). Its
precisions: int8 close to fp32, bad names refused, the one a database was built with recorded and
kept; a block's embeddings depend on its texts alone, batches ordered by token count."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from retro.db.embed import DEFAULT_NAME, load_model, resolve_name
from retro.errors import RetroError


def test_names_resolve(tmp_path):
    assert resolve_name("default") == DEFAULT_NAME
    assert resolve_name(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    for bad in (str(tmp_path / "missing" / "model"), "no-such-thing", "a/b/c"):
        with pytest.raises(RetroError, match="neither 'default', a model directory"):
            resolve_name(bad)


def test_loading_the_default_leaves_the_hub_setting_alone(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = load_model.__wrapped__(DEFAULT_NAME, "cpu")  # a fresh load, past the cache
    assert model.get_max_seq_length() > 0
    assert "HF_HUB_OFFLINE" not in os.environ


def test_an_unreachable_hub_id_is_a_retro_error():
    # offline in a child process: the hub reads HF_HUB_OFFLINE once, when imported
    code = ("from retro.db.embed import load_model\n"
            "load_model('retro-tests/no-such-model', 'cpu')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 1
    assert "RetroError: embedder 'retro-tests/no-such-model' could not be loaded" in result.stderr


def test_no_bf16_autocast_where_torch_is_held_below_avx512(monkeypatch):
    from retro.db.embed import default_precision
    from retro.machine import cpu_has_native_bf16

    for capability in ("avx2", "default"):
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
        assert not cpu_has_native_bf16()
        assert default_precision("cpu") == "fp32"


# --- precisions and the order of the texts in a block -------------------------------------------

# int8 against fp32 on the seeded texts below; observed mean 0.973, min 0.946 (on the demo's text:
# mean 0.978, top-10 neighbour overlap 0.78: bench/embedder.py). Rounding alone would give > 0.9999.
INT8_MIN_MEAN_COSINE = 0.95
INT8_MIN_COSINE = 0.85


def random_texts(n: int, seed: int) -> list[str]:
    """n seeded texts of 1 to 60 words over a small vocabulary (lengths varied, so batches pad)."""
    words = ("river orchestra volcano parliament protein football galaxy harvest the of and in with "
             "from tide melody magma ballot enzyme striker comet barley after during").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(1, 61))) for _ in range(n)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float32), b.astype(np.float32)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_length_sorted_batches_are_a_permutation_longest_first():
    from retro.db.embed import length_sorted_batches

    lengths = np.random.default_rng(0).integers(1, 80, size=300)
    batches = length_sorted_batches(lengths, 128)
    assert [len(batch) for batch in batches] == [128, 128, 44]
    order = np.concatenate(batches)
    assert sorted(order) == list(range(300))
    assert np.all(np.diff(lengths[order]) <= 0)
    ties = order[lengths[order] == lengths[order][0]]
    assert np.all(np.diff(ties) > 0)  # ties by position

    def padded(batches: list[np.ndarray]) -> int:
        return sum(int(lengths[batch].max()) * len(batch) for batch in batches)

    in_given_order = np.split(np.arange(300), [128, 256])
    assert padded(batches) < padded(in_given_order)


def test_int8_is_close_to_fp32_and_recorded():
    from retro.db.embed import Embedder

    texts = random_texts(200, seed=1)
    fp32 = Embedder("default", device="cpu", precision="fp32")
    int8 = Embedder("default", device="cpu", precision="int8")
    assert int8.describe() == {"name": DEFAULT_NAME, "dim": 384, "precision": "int8"}
    ours, theirs = int8.embed(texts), fp32.embed(texts)
    assert ours.shape == theirs.shape == (200, 384) and ours.dtype == np.float16
    assert np.allclose(np.linalg.norm(ours.astype(np.float32), axis=1), 1.0, atol=2e-3)
    similarity = cosines(ours, theirs)
    assert similarity.mean() >= INT8_MIN_MEAN_COSINE and similarity.min() >= INT8_MIN_COSINE
    assert not np.array_equal(ours, theirs)  # really quantized
    assert fp32.model is not int8.model


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_blocks_embeddings_depend_on_its_texts_alone(precision, tmp_path):
    """embed_to_file in blocks, straight or interrupted and resumed, writes what embedding each
    block's texts alone gives."""
    from retro.db.embed import Embedder, embed_to_file

    texts = random_texts(300, seed=2)
    embedder = Embedder("default", device="cpu", precision=precision)
    block = 128
    expected = np.concatenate([embedder.embed(texts[start : start + block]) for start in range(0, 300, block)])

    def run(path, after_block=lambda b: None):
        rows = np.arange(300)[:, None]
        return embed_to_file(embedder, path, 300, lambda start, stop: rows[start:stop],
                             lambda tokens: [texts[i] for i in tokens[:, 0]], "key", block,
                             lambda n: None, after_block)

    run(tmp_path / "straight.npy")

    def stop_after_first(b: int) -> None:
        if b == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed.npy", stop_after_first)
    run(tmp_path / "resumed.npy")
    for name in ("straight.npy", "resumed.npy"):
        assert np.array_equal(np.load(tmp_path / name), expected)


def test_bad_precisions_are_refused_clearly():
    from retro.db import BuildConfig
    from retro.db.embed import Embedder, check_precision

    message = "embedder precision must be one of 'fp32', 'bf16', 'int8', got 'fp16'"
    with pytest.raises(RetroError, match=message):
        Embedder("default", device="cpu", precision="fp16")
    with pytest.raises(RetroError, match=message):
        BuildConfig(embed_precision="fp16")
    with pytest.raises(RetroError, match="'int8' runs on the CPU only, not on 'cuda'"):
        check_precision("int8", "cuda")
    result = subprocess.run([sys.executable, "-m", "retro", "db", "build", "--out", "unused",
                             "--embed-precision", "fp16"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice: 'fp16'" in result.stderr


def test_a_database_records_its_precision_and_resumes_only_with_it(tmp_path, tmp_path_factory,
                                                                    monkeypatch):
    from test_db_support import CONFIG, corpus_dir

    from retro.db import build_db
    from retro.db.embed import Embedder
    from retro.db.manifest import DatabaseError
    from retro.db.stages import FAIL_AT, InjectedFailure

    out = tmp_path / "db"

    def build(**overrides):
        return build_db(out, CONFIG, corpus=(str(corpus_dir(tmp_path_factory.getbasetemp())),),
                        progress=False, log=lambda _: None, **overrides)

    monkeypatch.setenv(FAIL_AT, "embed:1")
    with pytest.raises(InjectedFailure):
        build(embed_precision="int8")
    monkeypatch.delenv(FAIL_AT)
    with pytest.raises(DatabaseError, match="its embeddings are int8; resume without "
                                            "embed_precision or with 'int8', not 'fp32'"):
        build(embed_precision="fp32")
    db = build()  # resumed without a precision: the recorded one
    recorded = json.loads((out / "manifest.json").read_text())["components"]["embedder"]
    assert recorded == {"name": DEFAULT_NAME, "dim": 384, "precision": "int8"}
    assert "embed_precision" not in db.manifest.config
    assert db.embedder.precision == "int8"  # the query-time embedder too
    texts = db.tokenizer.texts_without_eod(np.asarray(db.chunks.tokens[: CONFIG.block]))
    assert np.array_equal(db.embeddings[: CONFIG.block],
                          Embedder("default", device="cpu", precision="int8").embed(texts))
