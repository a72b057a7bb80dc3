"""The models: GPT (the decoder alone) and Retro (the decoder with CCA and the neighbour encoder),
RETRO-fit (Retro.from_gpt) and the presets' parameter counts. Shapes as in :mod:`retro.model`.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import torch
import torch.nn as nn

from retro.errors import RetroError
from retro.model import hf
from retro.model.checkpoint_file import checkpoint_path, load_state
from retro.model.config import DECODER_FIELDS, PAPER_PARAMS, RetroConfig
from retro.model.decoding import DecodeCache, LayerCache, NeighbourMemory, _attends, _describe
from retro.model.layers import (Block, CausalSelfAttention, ChunkedCrossAttention, Encoder,
                                NeighbourCrossAttention, run_block)
from retro.ops.cross_entropy import cross_entropy

_INDEX_DTYPES = (torch.int64, torch.int32)


class GPT(nn.Module):
    """GPT-2 decoder, RETRO's baseline: Retro without CCA and encoder (same parameter names)."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        self.config = config
        cca = self._cca_layers()
        self.first_cca = cca[0] if cca else None  # 0-based; the encoder reads this layer's input
        embeddings = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.positions == "learned":
            embeddings["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **embeddings,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(
                Block(config, config.n_embd, CausalSelfAttention(config),
                      ChunkedCrossAttention(config) if i in cca else None, gated=config.cca_gate,
                      cross_scale=config.cca_output_scale)
                for i in range(config.n_layer)
            ),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.encoder = Encoder(config) if cca else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for module in self.modules():  # the cross-attentions start local (RetroConfig.cross_locality)
            if isinstance(module, ChunkedCrossAttention):
                module.start_local(config.cross_locality, config.cca_locality_offset,
                                   config.cross_local_heads)
            elif isinstance(module, NeighbourCrossAttention):
                module.start_local(config.cross_locality, heads=config.cross_local_heads)

    def _cca_layers(self) -> tuple[int, ...]:
        """0-based decoder layers with CCA: none in GPT."""
        return ()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> GPT:
        """A Hugging Face GPT-2 (retro.model.hf): a directory with config.json and
        model.safetensors (or pytorch_model.bin, read with weights_only=True), or a hub id such
        as "gpt2" (downloaded by huggingface_hub; offline, a RetroError says to pass a local
        directory). Its logits equal transformers' GPT2LMHeadModel's to float32 rounding.

        overrides: RetroConfig fields that do not shape the decoder (dropout, chunk_size, ...),
        and block_size up to n_positions (the first block_size positions are kept).
        """
        directory = hf.resolve(path)
        config = hf.read_config(directory, **overrides)
        state = hf.from_hf_state(hf.read_weights(directory), config)
        with torch.device("meta"):
            model = GPT(config)
        model.load_state_dict(state, assign=True)
        model.transformer.wte.weight = model.lm_head.weight  # assign=True replaced the tie
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> os.PathLike:
        """Writes the decoder as a Hugging Face GPT-2 (config.json, model.safetensors) that
        transformers' GPT2LMHeadModel.from_pretrained loads with equal logits; a Retro's is its
        decoder with retrieval off. Raises RetroError for rotary positions (GPT-2 has none)."""
        with torch.device("meta"):
            decoder_keys = set(GPT(self.config).state_dict())
        state = {k: v for k, v in self.state_dict().items() if k in decoder_keys}
        return hf.write_pretrained(directory, self.config, state)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                last_only: bool = False, cache: DecodeCache | None = None, *,
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab) ((B, 1, vocab) with last_only) and the mean
        cross-entropy against targets (B, T) (-1 = ignore), or None. With a cache (new_cache),
        idx continues the tokens given so far. return_logits=False (with targets) returns
        (None, loss): a compiled training step then never writes the logits out."""
        return self._forward(idx, None, None, targets, last_only, cache, return_logits)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> DecodeCache:
        """An empty decoding state for up to max_len (default block_size) tokens per sequence, on
        the model's device and in its dtype."""
        config = self.config
        max_len = config.block_size if max_len is None else max_len
        if max_len < 1 or (config.positions == "learned" and max_len > config.block_size):
            raise ValueError(f"max_len must be in 1..block_size ({config.block_size}), "
                             f"not {max_len}")
        p = self.lm_head.weight
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        layers = [LayerCache(p.new_zeros(shape), p.new_zeros(shape)) for _ in range(config.n_layer)]
        return DecodeCache(layers, chunk_states=p.new_zeros(batch_size, 0, config.n_embd))

    def _forward(self, idx: torch.Tensor, nbr_tokens: torch.Tensor | None,
                 nbr_lens: torch.Tensor | None, targets: torch.Tensor | None, last_only: bool,
                 cache: DecodeCache | None,
                 return_logits: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The decoder, shared by GPT and Retro; arguments as in Retro.forward."""
        if not return_logits and targets is None:
            raise ValueError("return_logits=False returns the loss only: it needs targets")
        self._check_tokens(idx, targets, last_only, cache)
        nbr_lens = self._check_neighbours(idx, nbr_tokens, nbr_lens, cache)
        pos = 0 if cache is None else cache.pos
        x = self._embed(idx, pos)  # (B, T, C)
        memory = None
        for i, block in enumerate(self.transformer.h):
            layer_cache = None if cache is None else cache.layers[i]
            if i == self.first_cca:
                memory = self._neighbour_memory(x, nbr_tokens, nbr_lens, cache)
            cross_args = None if memory is None or block.cross is None else (memory, layer_cache)
            x = run_block(block, self.config.activation_checkpointing, x, (pos, layer_cache),
                          cross_args)
        if cache is not None:
            cache.pos += idx.shape[1]
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return (logits if return_logits else None), loss

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        """Token (+ learned position) embeddings of idx (..., N) at positions start .. start+N-1
        -> (..., N, C)."""
        x = self.transformer.wte(idx)
        if self.config.positions == "learned":
            positions = torch.arange(start, start + idx.shape[-1], device=idx.device)
            x = x + self.transformer.wpe(positions)
        return self.transformer.drop(x)

    def _neighbour_memory(self, x: torch.Tensor, nbr_tokens: torch.Tensor | None,
                          nbr_lens: torch.Tensor | None,
                          cache: DecodeCache | None) -> NeighbourMemory | None:
        """Encodes the neighbours of the chunks this call completes (each chunk's once) and
        gathers what the CCA layers attend to; None when no token has anything to attend to.

        x (B, T, C): decoder states at the first CCA layer's input, positions pos .. pos+T-1.
        """
        m, t = self.config.chunk_size, x.shape[1]
        pos = 0 if cache is None else cache.pos
        first = pos // m  # the chunk of the call's first token
        n_new = (pos + t) // m - first  # chunks completed by this call
        # decoder states from the start of chunk `first`: (B, pos % m + T, C)
        context = x if cache is None else torch.cat([cache.chunk_states, x], dim=1)
        use_cache = cache is not None and cache.nbr_lens is not None
        lens = [cache.nbr_lens] if use_cache else []
        encoded = None
        if nbr_tokens is not None and n_new > 0:
            nbrs = self._embed(nbr_tokens, 0)  # (B, L_new, K, R, C)
            encoded = self.encoder(nbrs, nbr_lens, context)  # (B, L_new, K, R, D)
            lens.append(nbr_lens)
        if cache is not None:
            cache.chunk_states = context[:, n_new * m:]
            if n_new > 0:
                cache.nbr_lens = None if encoded is None else nbr_lens[:, -1:]
        if not lens:
            return None
        lens = lens[0] if len(lens) == 1 else torch.cat(lens, dim=1)  # (B, L_vis, K)
        q_offset = pos - (first - int(use_cache)) * m
        return NeighbourMemory(encoded, lens, q_offset, use_cache, n_new,
                               _attends(lens, t, q_offset, m, x.dtype))

    def _check_tokens(self, idx: torch.Tensor, targets: torch.Tensor | None, last_only: bool,
                      cache: DecodeCache | None) -> None:
        """Raises ValueError unless idx and targets are (B, T) token ids that fit the model."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in _INDEX_DTYPES \
                or idx.shape[1] == 0:
            raise ValueError("idx must be a (B, T) int64 or int32 tensor of token ids with T >= 1, "
                             f"got {_describe(idx)}")
        b, t = idx.shape
        pos = 0 if cache is None else cache.pos
        if cache is not None and (pos + t > cache.max_len or cache.layers[0].k.shape[0] != b):
            raise ValueError(f"the cache holds {cache.layers[0].k.shape[0]} sequences of up to "
                             f"{cache.max_len} tokens: {pos} given so far, then idx "
                             f"{tuple(idx.shape)}")
        if self.config.positions == "learned" and pos + t > self.config.block_size:
            raise ValueError(f"sequence of {pos + t} tokens is longer than block_size "
                             f"{self.config.block_size}")
        if targets is None:
            return
        if last_only:
            raise ValueError("targets need the logits of every position: pass last_only=False")
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape \
                or targets.dtype not in _INDEX_DTYPES:
            raise ValueError(f"targets must be an int64 or int32 tensor of idx's shape "
                             f"{tuple(idx.shape)}, got {_describe(targets)}")

    def _check_neighbours(self, idx: torch.Tensor, nbr_tokens: torch.Tensor | None,
                          nbr_lens: torch.Tensor | None,
                          cache: DecodeCache | None) -> torch.Tensor | None:
        """Raises ValueError unless nbr_tokens and nbr_lens match idx (see Retro.forward);
        returns nbr_lens as int32 (B, L, K) (all R when not given), or None."""
        if nbr_tokens is None:
            if nbr_lens is not None:
                raise ValueError("nbr_lens given without nbr_tokens")
            return None
        (b, t), m = idx.shape, self.config.chunk_size
        pos = 0 if cache is None else cache.pos
        n_chunks = (pos + t) // m - pos // m
        if not isinstance(nbr_tokens, torch.Tensor) or nbr_tokens.dim() != 4 \
                or nbr_tokens.dtype not in _INDEX_DTYPES:
            raise ValueError("nbr_tokens must be a (B, L, K, R) int64 or int32 tensor of token "
                             f"ids, got {_describe(nbr_tokens)}")
        if nbr_tokens.shape[:2] != (b, n_chunks) or min(nbr_tokens.shape[2:]) == 0:
            raise ValueError(f"nbr_tokens must be (B, L, K, R) = ({b}, {n_chunks}, K >= 1, R >= 1) "
                             f"(T={t} tokens from position {pos} complete {n_chunks} chunks of "
                             f"chunk_size {m}), got {tuple(nbr_tokens.shape)}")
        if nbr_tokens.device != idx.device:
            raise ValueError(f"nbr_tokens is on {nbr_tokens.device} but idx on {idx.device}")
        n_nbrs, nbr_len = nbr_tokens.shape[2:]
        if self.config.positions == "learned" and nbr_len > self.config.block_size:
            raise ValueError(f"neighbours of R={nbr_len} tokens are longer than block_size "
                             f"{self.config.block_size}")
        if cache is not None and cache.nbr_lens is not None:
            cached = tuple(cache.layers[self.first_cca].nbr_k.shape[2:4])
            if (n_nbrs, nbr_len) != cached:
                raise ValueError(f"neighbours must keep their shape (K, R) = {cached} during one "
                                 f"decoding, got {(n_nbrs, nbr_len)}")
        if nbr_lens is None:
            return torch.full((b, n_chunks, n_nbrs), nbr_len, dtype=torch.int32, device=idx.device)
        if not isinstance(nbr_lens, torch.Tensor) or nbr_lens.shape != (b, n_chunks, n_nbrs) \
                or nbr_lens.dtype not in _INDEX_DTYPES or nbr_lens.device != idx.device:
            raise ValueError(f"nbr_lens must be an int32 or int64 tensor (B, L, K) = "
                             f"{(b, n_chunks, n_nbrs)} on {idx.device}, like nbr_tokens "
                             f"{tuple(nbr_tokens.shape)}; got {_describe(nbr_lens)}")
        return nbr_lens.to(torch.int32)


class Retro(GPT):
    """RETRO: the GPT decoder with CCA in config.retro_layers, and the neighbour encoder."""

    def _cca_layers(self) -> tuple[int, ...]:
        return tuple(layer - 1 for layer in self.config.retro_layers)

    def forward(self, idx: torch.Tensor, nbr_tokens: torch.Tensor | None = None,
                nbr_lens: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                last_only: bool = False, cache: DecodeCache | None = None, *,
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits and loss of idx given the neighbours of its chunks.

        idx (B, T) int64/int32 token ids at positions pos .. pos+T-1 (pos = 0, or cache.pos).
        nbr_tokens (B, L, K, R) int64/int32: the K neighbours (R tokens each, padded with pad_id)
            of each chunk this call completes, L = (pos+T) // m - pos // m (without a cache,
            T // m). None: no neighbours, and the logits are exactly the GPT decoder's.
        nbr_lens (B, L, K) int32/int64: real tokens of each neighbour, a prefix (0 = none);
            None: all R real.
        targets (B, T) token ids (-1 = ignore) -> loss, the mean cross-entropy; None -> None.
        last_only: logits (B, 1, vocab) of the last position only (generation).
        cache: a DecodeCache from new_cache; the call continues the tokens given so far at O(T)
            decoder work (a chunk's neighbours are encoded once, by the call that completes it).
        return_logits: False (with targets) -> (None, loss), for training steps.
        Returns logits (B, T, vocab) and loss.
        """
        return self._forward(idx, nbr_tokens, nbr_lens, targets, last_only, cache, return_logits)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> Retro:
        """Not a Retro: a Hugging Face GPT-2 has no retrieval layers (see below)."""
        raise RetroError("a Hugging Face GPT-2 has no CCA or encoder: RETRO-fit it with "
                         "Retro.from_gpt(GPT.from_pretrained(path))")

    @classmethod
    def from_gpt(cls, gpt: GPT | dict | str | os.PathLike, freeze: bool = True,
                 **retro_fields) -> Retro:
        """RETRO-fit (DeepMind §4.2): a Retro whose decoder is `gpt`'s, with fresh CCA and encoder.

        gpt: a GPT, a checkpoint {"model": state_dict, "config": dict of RetroConfig fields}, or
        the path of one: a GPT run's directory or its checkpoint file (ckpt.safetensors, a legacy
        ckpt.pt), or a dict saved with torch.save (read with weights_only=True: loading runs no
        code). retro_fields override the retrieval fields of its
        config (chunk_size, cca_layers, enc_*, ...), never the decoder's. freeze: the decoder's
        parameters (its token embedding, which the encoder shares, included) get
        requires_grad=False, so that only CCA and the encoder train.
        """
        if isinstance(gpt, (str, os.PathLike)):
            gpt = load_state(checkpoint_path(gpt) if os.path.isdir(gpt) else gpt)
        if isinstance(gpt, GPT) and not isinstance(gpt, Retro):
            config, state = gpt.config, gpt.state_dict()
        elif isinstance(gpt, dict) and {"model", "config"} <= gpt.keys():
            config = RetroConfig.from_saved(gpt["config"])
            # torch.compile's wrapper prefixes every name
            state = {k.removeprefix("_orig_mod."): v for k, v in gpt["model"].items()}
        else:
            raise ValueError("from_gpt needs a GPT, a checkpoint dict with 'model' and 'config', "
                             f"or its path; got {_describe(gpt)}")
        decoder_fields = set(DECODER_FIELDS) & retro_fields.keys()
        if decoder_fields:
            raise ValueError(f"from_gpt cannot change the decoder's {sorted(decoder_fields)}")
        # the CCA and encoder are new: the current default positions unless retro_fields say
        config = replace(config, **{"cross_positions": RetroConfig.cross_positions, **retro_fields})
        like = state["lm_head.weight"]
        with torch.device(like.device):
            model = cls(config).to(like.dtype)
        with torch.device("meta"):
            decoder_keys = set(GPT(config).state_dict())
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or decoder_keys & set(missing):
            raise ValueError(f"not a GPT state of this config: unexpected {sorted(unexpected)}, "
                             f"missing {sorted(decoder_keys & set(missing))}")
        for name, p in model.named_parameters():
            p.requires_grad_(not (freeze and name in decoder_keys))
        return model


from_gpt = Retro.from_gpt


def count_parameters(name: str) -> tuple[int, int]:
    """(Retro, GPT) parameter counts of preset `name`, built on the meta device (no memory)."""
    config = RetroConfig.preset(name)
    with torch.device("meta"):
        retro, gpt = (sum(p.numel() for p in cls(config).parameters()) for cls in (Retro, GPT))
    return retro, gpt


def parameter_table() -> str:
    """The paper presets' parameter counts next to the paper's, as a Markdown table."""
    rows = ["| preset | RETRO | paper | ratio | GPT | paper | ratio |",
            "|---|---|---|---|---|---|---|"]
    for name, (paper_retro, paper_gpt) in PAPER_PARAMS.items():
        retro, gpt = count_parameters(name)
        rows.append(f"| {name} | {retro / 1e6:,.1f}M | {paper_retro / 1e6:,.0f}M "
                    f"| {retro / paper_retro:.3f} | {gpt / 1e6:,.1f}M | {paper_gpt / 1e6:,.0f}M "
                    f"| {gpt / paper_gpt:.3f} |")
    return "\n".join(rows)
