"""The embedder's names: 'default' (shipped, offline), a model directory, a hub id; loading never
sets HF_HUB_OFFLINE for the process (other Hugging Face code in it keeps its settings)."""

import os
import subprocess
import sys

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
    from retro.db.embed import cpu_has_native_bf16, default_precision

    for capability in ("avx2", "default"):
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
        assert not cpu_has_native_bf16()
        assert default_precision("cpu") == "fp32"
