"""Hugging Face GPT-2 in and out (retro.model.hf): randomly initialised transformers models saved
to temporary directories (nothing is downloaded); RETRO-fit of one on the reference database of
test_db_support, and `retro export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_db_support import reference_db

from retro.cli import main
from retro.errors import RetroError
from retro.model import GPT, Retro, RetroConfig
from retro.train import TrainConfig, train
from retro.train.checkpoint import load_model

transformers = pytest.importorskip("transformers")

# GPT-2's vocabulary (the database's tokenizer), a block of the database's 256 tokens, 2 layers
HF_SIZES = dict(vocab_size=50257, n_positions=320, n_embd=32, n_layer=2, n_head=2)


def hf_gpt2(seed: int = 0, **sizes) -> transformers.GPT2LMHeadModel:
    """A randomly initialised GPT2LMHeadModel (eval mode) with larger-than-init biases and layer
    norms, so that a misplaced one shows in the logits, and MLP inputs of order 1, so that the
    GELU's approximation does."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**HF_SIZES, **sizes}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith("mlp.c_fc.weight"):
                p.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "gpt2"
    hf_gpt2().save_pretrained(directory)
    return directory


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, GPT):
            return model(ids)[0]
        return model(ids).logits


def assert_close_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    # float32 rounding: observed 2.1e-7 at most, logits up to 0.55 (GPT-2's GELU against the
    # exact one moves them by 8.4e-5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)


IDS = torch.randint(0, 50257, (2, 300), generator=torch.Generator().manual_seed(1))


def test_from_pretrained_gives_the_logits_of_transformers(hf_dir):
    model = GPT.from_pretrained(hf_dir)
    config = model.config
    assert (config.vocab_size, config.block_size, config.activation) == (50257, 320, "gelu_tanh")
    assert model.transformer.wte.weight is model.lm_head.weight  # still tied
    assert all(p.is_contiguous() for p in model.parameters())
    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    assert_close_logits(logits_of(model, IDS), logits_of(theirs, IDS))
    # the default activation stays retro's exact GELU: the same weights give other logits
    assert RetroConfig().activation == "gelu"
    exact = GPT(RetroConfig(**{**model.config.__dict__, "activation": "gelu"}))
    exact.load_state_dict(model.state_dict())
    x = torch.linspace(-4, 4, 101)
    assert torch.equal(model.transformer.h[0].mlp.gelu(x),
                       torch.nn.functional.gelu(x, approximate="tanh"))
    assert torch.equal(exact.transformer.h[0].mlp.gelu(x), torch.nn.functional.gelu(x))
    assert (logits_of(exact, IDS) - logits_of(model, IDS)).abs().max() > 2e-5  # observed 8.4e-5


def test_from_pretrained_reads_an_old_pytorch_bin_with_weights_only(tmp_path):
    """Names without "transformer.", the causal-mask buffers and no lm_head, as in the first GPT-2
    files; a file that needs pickled code is refused."""
    theirs = hf_gpt2(seed=2)
    state = {name.removeprefix("transformer."): tensor.clone()
             for name, tensor in theirs.state_dict().items() if name != "lm_head.weight"}
    state.update({f"h.{i}.attn.bias": torch.ones(1, 1, 320, 320).tril() for i in range(2)})
    torch.save(state, tmp_path / "pytorch_model.bin")
    theirs.config.to_json_file(tmp_path / "config.json")
    assert_close_logits(logits_of(GPT.from_pretrained(tmp_path), IDS), logits_of(theirs, IDS))
    torch.save({"weights": state, "code": RetroConfig()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(RetroError, match="weights_only=True"):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_keeps_the_first_block_size_positions(hf_dir):
    model = GPT.from_pretrained(hf_dir, block_size=256, dropout=0.1, chunk_size=32)
    assert model.config.block_size == 256 and model.config.chunk_size == 32
    assert model.training is False and model.config.dropout == 0.1
    whole = GPT.from_pretrained(hf_dir)
    assert_close_logits(logits_of(model, IDS[:, :256]), logits_of(whole, IDS[:, :256]))
    with pytest.raises(RetroError, match="block_size must be in 1..320"):
        GPT.from_pretrained(hf_dir, block_size=321)
    with pytest.raises(RetroError, match="cannot be overridden"):
        GPT.from_pretrained(hf_dir, n_layer=1)


def test_from_pretrained_refuses_what_retro_cannot_represent(tmp_path, hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    cases = {"model_type": ("gpt_neo", "model_type"),
             "activation_function": ("relu", "activation_function 'relu'"),
             "layer_norm_epsilon": (1e-6, "layer_norm_epsilon"),
             "tie_word_embeddings": (False, "untied")}
    for key, (value, message) in cases.items():
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(RetroError, match=message):
            GPT.from_pretrained(tmp_path)
    with pytest.raises(RetroError, match="no config.json"):
        GPT.from_pretrained(tmp_path / "..")
    with pytest.raises(RetroError, match="not a directory"):
        GPT.from_pretrained(tmp_path / "missing")
    with pytest.raises(RetroError, match="Retro.from_gpt"):
        Retro.from_pretrained(hf_dir)


def test_a_hub_id_offline_fails_saying_how_to_pass_a_directory(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import retro.model as m; m.GPT.from_pretrained('gpt2')"],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("retro.errors.RetroError: 'gpt2' is not a local directory")
    assert "pass a local directory" in last and "huggingface-cli download gpt2" in last


@pytest.mark.parametrize("bias, activation", [(True, "gelu_tanh"), (False, "gelu")])
def test_save_pretrained_loads_in_transformers_with_equal_logits(tmp_path, bias, activation):
    torch.manual_seed(3)
    config = RetroConfig(vocab_size=50304, block_size=256, n_layer=3, n_head=2, n_embd=32,
                         bias=bias, activation=activation, cca_layers=(2,), chunk_size=64)
    for model in (GPT(config), Retro(config)):  # Retro: its decoder, retrieval off
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".ln_" in name:
                    p.add_(0.1 * torch.randn_like(p))
        model.eval().save_pretrained(tmp_path / "out")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
        assert_close_logits(logits_of(model, IDS[:, :256]), logits_of(theirs, IDS[:, :256]))
        back = GPT.from_pretrained(tmp_path / "out")
        assert back.config.vocab_size == 50304  # the padded vocabulary goes both ways
        assert_close_logits(logits_of(back, IDS[:, :256]), logits_of(model, IDS[:, :256]))
    with pytest.raises(RetroError, match="learned positions"):
        GPT(RetroConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, cca_layers=(2,),
                        positions="rope")).save_pretrained(tmp_path / "rope")


def test_retro_fit_of_a_pretrained_gpt2_without_neighbours_is_the_gpt(hf_dir):
    gpt = GPT.from_pretrained(hf_dir)
    model = Retro.from_gpt(gpt, chunk_size=64, nbr_len=128)
    assert model.config.retro_layers == (2,) and model.config.activation == "gelu_tanh"
    assert torch.equal(logits_of(model, IDS), logits_of(gpt, IDS))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".cross." in n or "ln_cross" in n or n.startswith("encoder.")
                           for n in trained)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    return reference_db(tmp_path_factory.getbasetemp())


TRAIN = dict(max_iters=2, batch_size=2, warmup_iters=1, eval_batches=1, eval_interval=2,
             log_interval=1, progress=False, threads=1)


def test_train_init_from_a_hugging_face_directory_then_export(db_dir, hf_dir, tmp_path, capsys):
    """`retro train --model retro --init-from DIR --freeze`, then `retro export RUN --hf DIR`."""
    args = ["train", "--db", str(db_dir), "--out", str(tmp_path / "fit"), "--model", "retro",
            "--init-from", str(hf_dir), "--freeze", "--cca_layers=2"]
    args += [f"--{key}={value}" for key, value in TRAIN.items()]
    assert main(args) == 0
    model, state = load_model(tmp_path / "fit")
    gpt = GPT.from_pretrained(hf_dir, block_size=256)
    assert state["frozen"] and model.config.activation == "gelu_tanh"
    # the frozen decoder is GPT-2's: without neighbours the logits stay its logits
    assert torch.equal(logits_of(model, IDS[:, :256]), logits_of(gpt, IDS[:, :256]))

    assert main(["export", str(tmp_path / "fit"), "--hf", str(tmp_path / "out")]) == 0
    assert "retrieval off" in capsys.readouterr().out
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert_close_logits(logits_of(theirs, IDS[:, :256]), logits_of(gpt, IDS[:, :256]))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2 BPE's ids


def test_init_from_refuses_a_model_of_another_tokenizer(db_dir, hf_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((hf_dir / name).read_bytes())
    (other / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    for directory, message in ((other, "tokenizer: the tokenizer of .* is not the database's"),
                               (tmp_path / "missing", "not a directory")):
        with pytest.raises(RetroError, match=message):
            train(TrainConfig(db=db_dir, out=tmp_path / "run", init_from=str(directory),
                              freeze=True, model_args={"cca_layers": (2,)}, **TRAIN))
    small = tmp_path / "small"
    hf_gpt2(n_positions=128).save_pretrained(small)
    with pytest.raises(RetroError, match="128 positions, the database's samples 256"):
        train(TrainConfig(db=db_dir, out=tmp_path / "run", init_from=str(small), **TRAIN))
