"""Hugging Face GPT-2 directories in and out: ``config.json`` + ``model.safetensors`` (or
``pytorch_model.bin``), as ``transformers.GPT2LMHeadModel.save_pretrained`` writes them.

The files are read and written here, without transformers (the ``hf`` extra brings safetensors,
and huggingface_hub for hub ids). GPT-2 and retro's GPT differ only in layout: GPT-2's Conv1D
weights are stored (in, out), retro's nn.Linear (out, in); GPT-2 projects q, k and v with one
c_attn, retro with c_q, c_k, c_v. Its tanh-approximated GELU is ``activation="gelu_tanh"``. The
vocabulary keeps the checkpoint's size (GPT-2: 50257): rows padded to a multiple of 64 would get
logits of 0, not -inf, and take probability from every real token. :class:`retro.model.GPT`'s
``from_pretrained`` and ``save_pretrained`` use this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from retro.errors import RetroError
from retro.files import write_bytes_atomically, write_json_atomically
from retro.model.config import DECODER_FIELDS, RetroConfig

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
# GPT2Config's defaults, for the keys a config.json leaves out
HF_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
               "n_head": 12, "n_inner": None, "activation_function": "gelu_new",
               "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
               "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
               "tie_word_embeddings": True, "eos_token_id": 50256}
# transformers' names of the GELUs retro has (ACT2FN)
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's, which retro uses
# Conv1D weights, stored (in, out) by GPT-2
CONV1D = ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SUFFIXES_IGNORED = (".attn.bias", ".attn.masked_bias")  # old GPT-2 files' causal-mask buffers


def resolve(path: str | os.PathLike) -> Path:
    """The local directory of path: itself, or for a hub id ("gpt2", "org/name") the snapshot
    huggingface_hub downloads (or finds in its cache). Raises RetroError when neither works."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    name = str(path)
    looks_local = local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        raise RetroError(f"{name} is not a directory: pass a Hugging Face model directory "
                         f"({CONFIG} and {SAFETENSORS} or {PYTORCH_BIN})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RetroError(f"{name!r} is not a local directory, and hub ids need huggingface_hub: "
                         "pip install 'retro-lm[hf]', or pass a local directory") from None
    try:  # the config, tokenizer and safetensors files; pytorch_model.bin only when none
        snapshot = Path(snapshot_download(name, allow_patterns=["*.json", "merges.txt",
                                                                "*.safetensors"]))
        if not any(snapshot.glob("*.safetensors")):
            snapshot = Path(snapshot_download(name, allow_patterns=[PYTORCH_BIN]))
        return snapshot
    except Exception as error:  # offline, unknown id, gated repository: all end here
        raise RetroError(
            f"{name!r} is not a local directory, and fetching it from the Hugging Face Hub failed "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"Offline, pass a local directory holding {CONFIG} and {SAFETENSORS} (or "
            f"{PYTORCH_BIN}), e.g. one written by `huggingface-cli download {name} --local-dir "
            f"DIR` on a machine online, or by transformers' save_pretrained") from None


def read_config(directory: Path, **overrides: Any) -> RetroConfig:
    """The RetroConfig of a GPT-2 config.json, with overrides of the fields that do not shape the
    decoder (and block_size up to n_positions: the first block_size learned positions are kept).
    Raises RetroError for a model retro's GPT cannot represent exactly."""
    path = directory / CONFIG
    if not path.is_file():
        raise RetroError(f"{directory} has no {CONFIG}: not a Hugging Face model directory")
    hf = {**HF_DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    if hf.get("model_type") != "gpt2":
        raise RetroError(f"{path}: model_type is {hf.get('model_type')!r}; retro loads GPT-2 "
                         "models (model_type 'gpt2') only")
    problems = [
        (hf["activation_function"] in HF_ACTIVATIONS,
         f"activation_function {hf['activation_function']!r} (retro has {sorted(HF_ACTIVATIONS)})"),
        (hf["n_inner"] in (None, 4 * hf["n_embd"]), f"n_inner {hf['n_inner']} (retro: 4 * n_embd)"),
        (abs(hf["layer_norm_epsilon"] - LAYER_NORM_EPS) < 1e-12,
         f"layer_norm_epsilon {hf['layer_norm_epsilon']} (retro: {LAYER_NORM_EPS})"),
        (hf["scale_attn_weights"] and not hf["scale_attn_by_inverse_layer_idx"],
         "attention scaled otherwise than by 1/sqrt(head width)"),
        (not hf["add_cross_attention"], "cross-attention layers (an encoder-decoder GPT-2)"),
        (hf["tie_word_embeddings"], "untied input and output embeddings"),
    ]
    unsupported = [message for ok, message in problems if not ok]
    if unsupported:
        raise RetroError(f"{path}: retro's GPT cannot represent " + "; ".join(unsupported))
    fixed = sorted(set(DECODER_FIELDS) & overrides.keys() - {"block_size"})
    if fixed:
        raise RetroError(f"{fixed} come from {path}; they cannot be overridden")
    block_size = overrides.pop("block_size", hf["n_positions"])
    if not 1 <= block_size <= hf["n_positions"]:
        raise RetroError(f"block_size must be in 1..{hf['n_positions']} (the model's "
                         f"n_positions), not {block_size}")
    eos = hf["eos_token_id"]
    fields = dict(vocab_size=hf["vocab_size"], block_size=block_size, n_layer=hf["n_layer"],
                  n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True, positions="learned",
                  activation=HF_ACTIVATIONS[hf["activation_function"]], dropout=0.0)
    if isinstance(eos, int):
        fields["pad_id"] = eos
    if hf["n_layer"] < 6:  # below the every-3rd-from-6 rule's first layer: CCA in the last one
        fields["cca_layers"] = (hf["n_layer"],)
    return RetroConfig(**{**fields, **overrides})


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors (or its shards), else of pytorch_model.bin (read with
    weights_only=True), by name without the "transformer." prefix."""
    index = directory / SAFETENSORS_INDEX
    if (directory / SAFETENSORS).is_file() or index.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise RetroError("reading model.safetensors needs safetensors: "
                             "pip install 'retro-lm[hf]'") from None
        files = [SAFETENSORS]
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        tensors = {}
        for name in files:
            tensors.update(load_file(directory / name))
    elif (directory / PYTORCH_BIN).is_file():
        try:
            tensors = torch.load(directory / PYTORCH_BIN, map_location="cpu", weights_only=True)
        except Exception as error:  # pickled code, or a damaged file
            raise RetroError(f"{directory / PYTORCH_BIN} does not load with weights_only=True: "
                             f"{error}") from None
    else:
        raise RetroError(f"{directory} has neither {SAFETENSORS} nor {PYTORCH_BIN}")
    return {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()
            if not name.endswith(SUFFIXES_IGNORED)}


def from_hf_state(hf: dict[str, torch.Tensor], config: RetroConfig) -> dict[str, torch.Tensor]:
    """GPT-2's tensors -> the state dict of retro's GPT of config (float32, contiguous; wte and
    lm_head one tensor). Raises RetroError
    for a missing, unexpected or misshapen tensor."""
    hf = dict(hf)
    c = config.n_embd
    wte = hf.pop("wte.weight", None)
    head = hf.pop("lm_head.weight", None)  # tied: equal to wte, or left out of the file
    if wte is None:
        raise RetroError("the checkpoint has no token embedding (wte.weight)")
    if head is not None and not torch.equal(head, wte):
        raise RetroError("lm_head.weight differs from wte.weight: retro ties them")
    state = {"transformer.wte.weight": wte, "lm_head.weight": wte}
    wpe = hf.pop("wpe.weight", None)
    if wpe is None or wpe.shape[0] < config.block_size:
        raise RetroError(f"the checkpoint needs {config.block_size} learned positions "
                         f"(wpe.weight), has {None if wpe is None else tuple(wpe.shape)}")
    state["transformer.wpe.weight"] = wpe[:config.block_size]
    for name in ("ln_f.weight", "ln_f.bias"):
        state[f"transformer.{name}"] = _pop(hf, name)
    for i in range(config.n_layer):
        layer = f"h.{i}."
        q, k, v = _pop(hf, layer + "attn.c_attn.weight").split(c, dim=1)  # (C, C) each, (in, out)
        qb, kb, vb = _pop(hf, layer + "attn.c_attn.bias").split(c)
        for name, weight, bias in (("c_q", q, qb), ("c_k", k, kb), ("c_v", v, vb)):
            state[f"transformer.{layer}attn.{name}.weight"] = weight.t()
            state[f"transformer.{layer}attn.{name}.bias"] = bias
        for name in CONV1D:
            state[f"transformer.{layer}{name}"] = _pop(hf, layer + name).t()
        for name in ("attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias", "ln_1.weight",
                     "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            state[f"transformer.{layer}{name}"] = _pop(hf, layer + name)
    if hf:
        raise RetroError(f"tensors a GPT-2 of {config.n_layer} layers does not have: "
                         f"{sorted(hf)[:8]}")
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def _pop(hf: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in hf:
        raise RetroError(f"the checkpoint has no {name}")
    return hf.pop(name)


def to_hf_state(state: dict[str, torch.Tensor], config: RetroConfig) -> dict[str, torch.Tensor]:
    """The decoder of retro's state dict -> GPT-2's tensors (contiguous, none shared; lm_head is
    left out, as transformers writes tied weights). A model without biases gets zero biases."""
    def get(name: str, width: int) -> torch.Tensor:
        tensor = state.get(name)
        if tensor is None:  # bias=False: a zero bias adds nothing
            return torch.zeros(width, dtype=state["lm_head.weight"].dtype)
        return tensor

    c = config.n_embd
    hf = {"transformer.wte.weight": state["transformer.wte.weight"],
          "transformer.wpe.weight": state["transformer.wpe.weight"],
          "transformer.ln_f.weight": state["transformer.ln_f.weight"],
          "transformer.ln_f.bias": get("transformer.ln_f.bias", c)}
    for i in range(config.n_layer):
        layer = f"transformer.h.{i}."  # the same prefix in both
        hf[layer + "attn.c_attn.weight"] = torch.cat(
            [state[f"{layer}attn.{name}.weight"].t() for name in ("c_q", "c_k", "c_v")], dim=1)
        hf[layer + "attn.c_attn.bias"] = torch.cat(
            [get(f"{layer}attn.{name}.bias", c) for name in ("c_q", "c_k", "c_v")])
        for name in CONV1D:
            hf[layer + name] = state[layer + name].t()
        for name, width in (("attn.c_proj.bias", c), ("mlp.c_fc.bias", 4 * c),
                            ("mlp.c_proj.bias", c), ("ln_1.bias", c), ("ln_2.bias", c)):
            hf[layer + name] = get(layer + name, width)
        for name in ("ln_1.weight", "ln_2.weight"):
            hf[layer + name] = state[layer + name]
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in hf.items()}


def hf_config(config: RetroConfig, dtype: torch.dtype) -> dict[str, Any]:
    """GPT-2's config.json for retro's GPT of config. Raises RetroError for rotary positions,
    which GPT-2 does not have."""
    if config.positions != "learned":
        raise RetroError(f"GPT-2 has learned positions; this model has {config.positions!r}")
    activation = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[config.activation]
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "n_inner": None, "activation_function": activation,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": config.pad_id, "eos_token_id": config.pad_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def write_pretrained(directory: str | os.PathLike, config: RetroConfig,
                     decoder_state: dict[str, torch.Tensor]) -> Path:
    """Writes config.json and model.safetensors of the decoder (each atomically); returns the
    directory."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise RetroError("writing model.safetensors needs safetensors: "
                         "pip install 'retro-lm[hf]'") from None
    settings = hf_config(config, decoder_state["lm_head.weight"].dtype)  # first: it checks
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_state(decoder_state, config)
    write_json_atomically(directory / CONFIG, settings)
    write_bytes_atomically(directory / SAFETENSORS, save(tensors, metadata={"format": "pt"}))
    return directory


def tokenizer_vocab(directory: Path) -> dict[str, int] | None:
    """The token -> id map of the tokenizer files in directory (vocab.json, or tokenizer.json
    with its added tokens), or None when it has neither."""
    if (directory / "vocab.json").is_file():
        return json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    if (directory / "tokenizer.json").is_file():
        spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = dict(spec.get("model", {}).get("vocab") or {})
        vocab.update({token["content"]: token["id"] for token in spec.get("added_tokens", [])})
        return vocab
    return None


def tokenizer_mismatch(directory: Path, config: RetroConfig, tokenizer: Any) -> str | None:
    """Why the model in directory does not read the token ids of tokenizer (a
    retro.data.tokenizer.Tokenizer), or None when it does: its tokenizer files must hold the same
    vocabulary; without any, GPT-2's is assumed, so the tokenizer must be GPT-2's ("gpt2") and
    the model's vocabulary size and end-of-text id GPT-2's."""
    vocab = tokenizer_vocab(directory)
    if vocab is None:
        gpt2 = (tokenizer.name == "gpt2" and config.vocab_size == tokenizer.vocab_size
                and config.pad_id == tokenizer.eod_id)
        return None if gpt2 else (
            f"{directory} has no tokenizer files, so its model is taken to read GPT-2 BPE ids; "
            f"the database's tokenizer is {tokenizer.name!r} ({tokenizer.vocab_size} tokens, "
            f"end of text {tokenizer.eod_id}) and the model has {config.vocab_size} tokens, end "
            f"of text {config.pad_id}")
    theirs = tokenizer.backend.get_vocab()
    if vocab != theirs:
        differ = sorted(token for token in vocab.keys() | theirs.keys()
                        if vocab.get(token) != theirs.get(token))
        return (f"the tokenizer of {directory} ({len(vocab)} tokens) is not the database's "
                f"{tokenizer.name!r} ({len(theirs)} tokens): {len(differ)} tokens differ, e.g. "
                f"{differ[:3]}")
    return None


def write_tokenizer(directory: str | os.PathLike, name: str, model_max_length: int) -> list[str]:
    """Writes the files transformers' AutoTokenizer reads for retro's tokenizer `name` ("gpt2":
    vocab.json and merges.txt; else the tokenizer.json at that path) beside a model; returns the
    names written."""
    from retro.data.tokenizer import GPT2, EOD_TOKENS, gpt2_files

    directory = Path(directory)
    if name == GPT2:
        sources = gpt2_files()
        settings = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                    **{key: EOD_TOKENS[0] for key in ("bos_token", "eos_token", "unk_token")}}
    else:
        if not Path(name).is_file():
            raise RetroError(f"the tokenizer {name} is gone: its files are not written")
        sources = {"tokenizer.json": Path(name)}
        settings = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for target, source in sources.items():
        write_bytes_atomically(directory / target, Path(source).read_bytes())
    write_json_atomically(directory / "tokenizer_config.json",
                          {**settings, "model_max_length": model_max_length})
    return [*sources, "tokenizer_config.json"]
