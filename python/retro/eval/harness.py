"""lm-evaluation-harness adapter: model type ``retro`` (a GPT or RETRO run, RETRO with live
retrieval from a database).

    lm_eval --model retro --model_args run=RUN,db=DB --tasks TASK ...

is lm_eval's own command: the installed wheel's ``retro_lm_eval_hook.pth`` registers ``retro`` as
soon as lm_eval loads its model registry (_retro_lm_eval_hook; ``RETRO_NO_LM_EVAL_HOOK=1`` turns
it off), and lm_eval imports this module only when a run asks for the ``retro`` type.
``retro-lm-eval`` and ``python -m retro.eval.harness`` are the same command line, registered by
import: without the hook (a source checkout on PYTHONPATH), ``import retro.eval.harness`` before
``lm_eval.simple_evaluate(model="retro", ...)`` in Python. ``model_args``: run (the run directory),
db (default: the run's database, which also gives the tokenizer), retrieval (default true; false:
RETRO with retrieval off), max_gen_toks. Without lm_eval installed, :class:`RetroLM` works alone:
its methods take plain tuples.

The rules are retro's QA evaluation's (retro.eval.qa): a context is tokenized apart from its
continuation (a trailing space moves to the continuation, as lm_eval's HF model does) and
left-padded with ``<|endoftext|>`` to whole chunks (an empty context is one ``<|endoftext|>``);
RETRO reads the neighbours of every chunk its input completes, retrieved through
``Database.retrieve``. Inputs longer than block_size lose whole chunks from the left. A rolling
log-likelihood scores the text after one ``<|endoftext|>`` in windows of block_size targets,
each window's inputs starting on a chunk boundary; generation is retro.generation.generate.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from _retro_lm_eval_hook import register_model_type
from retro.db import Database, open_db
from retro.device import resolve_device
from retro.errors import RetroError
from retro.generation.generator import generate
from retro.model import GPT
from retro.train.checkpoint import load_model
from retro.train.run_db import open_run_db

try:  # lm_eval is optional: without it RetroLM works alone, unregistered
    from lm_eval.api.model import LM as _Base
except ImportError:
    _Base = object


class RetroLM(_Base):
    """A retro model as lm_eval's LM: loglikelihood, loglikelihood_rolling and generate_until.

    Built from a run (run=, db=) or, in Python, from a model and a Database (model=, db=).
    """

    def __init__(self, run: str | os.PathLike | None = None,
                 db: str | os.PathLike | Database | None = None, retrieval: bool = True,
                 batch_size: int | str | None = 8, device: str | None = None,
                 max_gen_toks: int = 64, model: GPT | None = None,
                 max_batch_size: int | None = None) -> None:
        super().__init__()
        # lm_eval's command line passes cuda:0 unless told otherwise
        device = str(resolve_device(device or "cpu", hint="pass --device cpu"))
        if model is None:
            if run is None:
                raise RetroError("the retro model type needs run=RUN (a training run directory)")
            model, state = load_model(run, map_location=device)
            # a Database given is opened again from its root, to be checked against the run
            db = open_run_db(model, state, db.root if isinstance(db, Database) else db)
        elif not isinstance(db, Database):
            if db is None:
                raise RetroError("a model needs db= (its database: the tokenizer, the neighbours)")
            db = open_db(db)
        self.model = model.to(device).eval()
        self.db = db
        self.retrieving = bool(retrieval) and model.encoder is not None
        # "auto" (lm_eval's batch size search) and max_batch_size: a fixed batch here
        size = str(batch_size)
        self.batch_size = int(size) if size.isdigit() else 8
        self.max_gen_toks = int(max_gen_toks)
        self.m, self.block_size = model.config.chunk_size, model.config.block_size
        self.eod_id = db.eod_id

    # -- lm_eval's interface: each request's .args, or plain tuples -----------------------------

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(context, continuation) -> (log P(continuation | context), whether greedy decoding
        gives the continuation)."""
        pairs = [_args(r) for r in requests]
        contexts = self._encode([_split_space(c, x)[0] for c, x in pairs])
        continuations = self._encode([_split_space(c, x)[1] for c, x in pairs])
        sequences = [(np.concatenate([self._pad(ctx), cont]), len(cont))
                     for ctx, cont in zip(contexts, continuations)]
        return self._score(sequences)

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        """(text,) -> log P(text) after one <|endoftext|>, over windows of block_size targets."""
        width = self.block_size - self.block_size % self.m  # windows start on chunk boundaries
        windows, owners = [], []
        for i, tokens in enumerate(self._encode([_args(r)[0] for r in requests])):
            sequence = np.concatenate([[self.eod_id], tokens]).astype(np.int64)
            for start in range(0, len(tokens), width):
                window = sequence[start:start + width + 1]
                windows.append((window, len(window) - 1))
                owners.append(i)
        totals = np.zeros(len(requests))
        for owner, (log_prob, _) in zip(owners, self._score(windows)):
            totals[owner] += log_prob
        return totals.tolist()

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """(context, {"until": [...], "max_gen_toks": n, "do_sample": ..., "temperature": ...})
        -> the text generated up to (not including) the first stop string or <|endoftext|>."""
        out = []
        for context, settings in (_args(r) for r in requests):
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sample = settings.get("do_sample", False)
            temperature = float(settings.get("temperature", 1.0)) if sample else 0.0
            prompt = self._encode([context])[0][-self.block_size:]
            if len(prompt) == 0:
                prompt = np.array([self.eod_id])
            tokens: list[int] = []
            text = ""
            for token in generate(self.model, self.db, prompt,
                                  int(settings.get("max_gen_toks", self.max_gen_toks)),
                                  temperature=temperature, retrieval=self.retrieving,
                                  seed=settings.get("seed")):
                if token == self.eod_id:
                    break
                tokens.append(token)
                text = self.db.tokenizer.decode_batch([tokens])[0]
                if any(stop in text for stop in until):
                    break
            out.append(min((text.split(stop)[0] for stop in until), key=len, default=text))
        return out

    # -- the scoring ----------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.db.tokenizer.encode_batch(list(texts))

    def _pad(self, context: np.ndarray) -> np.ndarray:
        """The context left-padded with <|endoftext|> to whole chunks (at least one token)."""
        context = context if len(context) else np.array([self.eod_id])
        return np.concatenate([np.full(-len(context) % self.m, self.eod_id), context])

    def _fit(self, sequence: np.ndarray, n_scored: int) -> np.ndarray:
        """sequence without whole chunks from the left until its input fits block_size."""
        excess = len(sequence) - 1 - self.block_size
        drop = -(-excess // self.m) * self.m if excess > 0 else 0
        if drop + 1 > len(sequence) - n_scored:
            raise RetroError(f"a continuation of {n_scored} tokens does not fit block_size "
                             f"{self.block_size}")
        return sequence[drop:]

    @torch.no_grad()
    def _score(self, sequences: list[tuple[np.ndarray, int]]) -> list[tuple[float, bool]]:
        """(tokens, n) -> (summed log-probability of the last n tokens given the rest, whether
        each is the argmax), batched by length; RETRO reads its inputs' chunks' neighbours."""
        fitted = [self._fit(tokens.astype(np.int64), n) for tokens, n in sequences]
        order = sorted(range(len(fitted)), key=lambda i: len(fitted[i]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(fitted)
        device = self.model.lm_head.weight.device
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin:begin + self.batch_size]
            width = max(len(fitted[i]) for i in batch)
            tokens = np.full((len(batch), width), self.eod_id, dtype=np.int64)
            for row, i in enumerate(batch):  # right padding: causal, it changes no scored logit
                tokens[row, :len(fitted[i])] = fitted[i]
            idx = torch.from_numpy(tokens[:, :-1]).to(device)  # (B, T)
            logits, _ = self.model(idx, **self._neighbours(tokens[:, :-1], device))  # (B, T, V)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(batch):
                n, end = sequences[i][1], len(fitted[i]) - 1
                targets = torch.from_numpy(fitted[i][end - n + 1:end + 1]).to(device)
                scored = log_probs[row, end - n:end]  # (n, V)
                results[i] = (float(scored.double().gather(1, targets[:, None]).sum()),
                              bool((scored.argmax(dim=-1) == targets).all()))
        return results

    def _neighbours(self, inputs: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """{nbr_tokens (B, L, k, 2m), nbr_lens (B, L, k)} of the complete chunks of inputs (B, T),
        one Database.retrieve call; {} without retrieval."""
        n_chunks = inputs.shape[1] // self.m
        if not self.retrieving or n_chunks == 0:
            return {}
        queries = inputs[:, :n_chunks * self.m].reshape(-1, self.m)
        _, lens, tokens = self.db.retrieve(queries, k=self.model.config.n_nbrs)
        shape = (inputs.shape[0], n_chunks, -1)  # (B, L, k)
        return {"nbr_tokens": torch.from_numpy(tokens.reshape(*shape, tokens.shape[-1])).to(device),
                "nbr_lens": torch.from_numpy(lens.reshape(shape).astype(np.int32)).to(device)}


def _args(request: Any) -> tuple:
    """A request's arguments: lm_eval's Instance.args, or the tuple itself."""
    return tuple(getattr(request, "args", request))


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    """Trailing spaces of the context move to the continuation (lm_eval's HF model's rule)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces == 0:
        return context, continuation
    return context[:-n_spaces], context[-n_spaces:] + continuation


if _Base is not object:
    register_model_type()


def main(argv: Sequence[str] | None = None) -> None:
    """lm_eval's command line, with the retro model type registered."""
    if _Base is object:
        raise SystemExit("retro.eval.harness needs lm_eval: pip install 'retro-lm[harness]'")
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
