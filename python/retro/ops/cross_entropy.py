"""Cross-entropy over a vocabulary, the loss of a language model's training step, as
``torch.ops.retro.cross_entropy`` on the CPU.

``cross_entropy(logits, targets, ignore_index=-100)`` is ``F.cross_entropy``'s mean: over the
rows whose target is not ignore_index (NaN when there are none). On the CPU it runs the core's
kernel (cpp/include/retro/cross_entropy.h): per-row losses with autograd and a fake kernel, the
forward pass reading the logits once without writing (rows, vocab) log-probabilities, the backward
pass writing their gradient in one pass, where F.cross_entropy runs log_softmax, nll_loss, a
zero-filled gradient and log_softmax's backward (and, under bf16 autocast, a float32 copy of the
logits and its backward). bfloat16 logits are computed in float32 inside; the gradient comes in
the logits' dtype. Elsewhere (CUDA, where torch.compile fuses the loss) it is F.cross_entropy.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from retro import _core

_CORE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward(logits: torch.Tensor, targets: torch.Tensor,
             ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets = logits.contiguous(), targets.contiguous()
    rows, vocab = logits.shape
    loss = torch.empty(rows, dtype=_loss_dtype(logits.dtype))
    lse = torch.empty_like(loss)
    _core.cross_entropy_forward(_CORE_DTYPES[logits.dtype], rows, vocab, ignore_index,
                                logits.data_ptr(), targets.data_ptr(), lse.data_ptr(),
                                loss.data_ptr())
    return loss, lse


def _backward(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
              grad_loss: torch.Tensor, ignore_index: int) -> torch.Tensor:
    logits, targets, lse = logits.contiguous(), targets.contiguous(), lse.contiguous()
    grad_loss = grad_loss.to(lse.dtype).contiguous()
    grad = torch.empty_like(logits)
    rows, vocab = logits.shape
    _core.cross_entropy_backward(_CORE_DTYPES[logits.dtype], rows, vocab, ignore_index,
                                 logits.data_ptr(), targets.data_ptr(), lse.data_ptr(),
                                 grad_loss.data_ptr(), grad.data_ptr())
    return grad


_forward_op = torch.library.custom_op(
    "retro::cross_entropy", _forward, mutates_args=(), device_types=("cpu",),
    schema="(Tensor logits, Tensor targets, int ignore_index) -> (Tensor, Tensor)")
_backward_op = torch.library.custom_op(
    "retro::cross_entropy_backward", _backward, mutates_args=(), device_types=("cpu",),
    schema="(Tensor logits, Tensor targets, Tensor lse, Tensor grad_loss, int ignore_index) "
           "-> Tensor")


@_forward_op.register_fake
def _(logits, targets, ignore_index):
    loss = logits.new_empty(logits.shape[:1], dtype=_loss_dtype(logits.dtype))
    return loss, torch.empty_like(loss)


@_backward_op.register_fake
def _(logits, targets, lse, grad_loss, ignore_index):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.ignore_index = ignore_index


def _autograd_backward(ctx, grad_loss, grad_lse):
    logits, targets, lse = ctx.saved_tensors
    return _backward_op(logits, targets, lse, grad_loss, ctx.ignore_index), None, None


_forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                  ignore_index: int = -100) -> torch.Tensor:
    """The mean cross-entropy of logits (N, V) against targets (N,) integer class ids, over the
    rows whose target is not ignore_index: a scalar (float32; float64 for float64 logits).

    Raises ValueError for logits that are not (N, V) floating point, targets that are not (N,)
    integers on logits' device, or (on the CPU) a target outside [0, V) other than ignore_index.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"cross_entropy: logits must be a floating point (N, V) tensor, got "
                         f"{_describe(logits)}")
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1] \
            or targets.is_floating_point() or targets.is_complex() \
            or targets.device != logits.device:
        raise ValueError(f"cross_entropy: targets must be an integer ({logits.shape[0]},) tensor "
                         f"on {logits.device}, got {_describe(targets)}")
    if logits.device.type != "cpu" or logits.dtype not in _CORE_DTYPES:
        return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index)
    losses, _ = torch.ops.retro.cross_entropy(logits, targets.long(), ignore_index)
    return losses.sum() / (targets != ignore_index).sum()


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} {tuple(x.shape)} on {x.device}"
    return type(x).__name__
