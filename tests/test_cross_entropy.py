"""retro.ops.cross_entropy (the core's CPU kernel) against F.cross_entropy in float64: the loss
and its gradient on odd sizes with ignored rows, in float64, float32 and bfloat16; float64
gradcheck; opcheck and torch.compile; poisoned outputs; NaN logits; clear errors for bad input;
and the GPT's training loss through it."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from retro import _core  # noqa: E402
from retro.ops.cross_entropy import cross_entropy  # noqa: E402

TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}


def make_inputs(rows: int, vocab: int, dtype: torch.dtype, seed: int = 0, scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, vocab, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[::3] = -1  # ignored rows
    return logits, targets


def loss_and_grad(fn, logits: torch.Tensor, targets: torch.Tensor):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, targets)
    loss.backward()
    return loss.detach(), x.grad


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.double(), targets, ignore_index=-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, vocab", [(1, 1), (7, 3), (37, 1003), (64, 8193)])
def test_loss_and_gradient_match_the_float64_reference(dtype, rows, vocab):
    logits, targets = make_inputs(rows, vocab, dtype)
    targets[0] = min(1, vocab - 1)  # at least one row counts
    loss, grad = loss_and_grad(lambda x, t: cross_entropy(x, t, ignore_index=-1), logits, targets)
    want, want_grad = loss_and_grad(reference, logits.double(), targets)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    tol = TOLERANCE[dtype]
    assert loss.double().item() == pytest.approx(want.item(), rel=tol, abs=tol)
    assert torch.allclose(grad.double(), want_grad, rtol=tol, atol=tol)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), vocab=st.integers(1, 300), scale=st.floats(0.0, 30.0),
       seed=st.integers(0, 2**16))
def test_property_any_size_and_scale(rows, vocab, scale, seed):
    logits, targets = make_inputs(rows, vocab, torch.float32, seed, scale)
    targets[0] = seed % vocab
    loss, grad = loss_and_grad(lambda x, t: cross_entropy(x, t, ignore_index=-1), logits, targets)
    want, want_grad = loss_and_grad(reference, logits.double(), targets)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)
    assert torch.allclose(grad.double(), want_grad, rtol=1e-5, atol=1e-6)
    assert torch.all(grad[targets == -1] == 0)


def test_gradcheck_in_float64():
    logits, targets = make_inputs(5, 11, torch.float64)
    targets[0] = 2
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets, ignore_index=-1),
                                    (logits.requires_grad_(),))


def test_the_default_ignore_index_is_torchs():
    logits, targets = make_inputs(9, 13, torch.float32)
    targets[targets == -1] = -100
    assert cross_entropy(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_every_row_ignored_gives_nan_as_torch():
    logits = torch.randn(4, 7)
    targets = torch.full((4,), -1)
    assert math.isnan(cross_entropy(logits, targets, ignore_index=-1).item())
    assert math.isnan(F.cross_entropy(logits, targets, ignore_index=-1).item())


def test_nan_logits_give_a_nan_loss():
    logits, targets = make_inputs(6, 50, torch.float32)
    targets[:] = 3
    logits[2, 40] = math.nan  # not the target: the row's normaliser is NaN
    assert math.isnan(cross_entropy(logits, targets).item())


@pytest.mark.parametrize("dtype, name", [(torch.float32, "float32"), (torch.bfloat16, "bfloat16"),
                                         (torch.float64, "float64")])
def test_the_core_writes_every_output(dtype, name):
    """Outputs poisoned with NaN (0xFFFF for bf16) come back written everywhere, ignored rows too."""
    logits, targets = make_inputs(11, 77, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lse, loss = (torch.full((11,), math.nan, dtype=acc) for _ in range(2))
    _core.cross_entropy_forward(name, 11, 77, -1, logits.data_ptr(), targets.data_ptr(),
                                lse.data_ptr(), loss.data_ptr())
    assert not lse.isnan().any() and not loss.isnan().any()
    grad = torch.full_like(logits, math.nan)
    grad_loss = torch.ones(11, dtype=acc)
    _core.cross_entropy_backward(name, 11, 77, -1, logits.data_ptr(), targets.data_ptr(),
                                 lse.data_ptr(), grad_loss.data_ptr(), grad.data_ptr())
    assert not grad.isnan().any()
    assert torch.all(grad[targets == -1] == 0)


def test_opcheck_and_compile():
    logits, targets = make_inputs(8, 21, torch.float32)
    torch.library.opcheck(torch.ops.retro.cross_entropy, (logits.requires_grad_(), targets, -1))
    compiled = torch.compile(lambda x, t: cross_entropy(x, t, ignore_index=-1), fullgraph=True,
                             backend="aot_eager")
    got, got_grad = loss_and_grad(compiled, logits, targets)
    want, want_grad = loss_and_grad(lambda x, t: cross_entropy(x, t, ignore_index=-1), logits,
                                    targets)
    assert torch.allclose(got, want) and torch.allclose(got_grad, want_grad)


@pytest.mark.parametrize("logits, targets, match", [
    (torch.randn(3, 4, 5), torch.zeros(3, dtype=torch.long), "logits must be"),
    (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), "logits must be"),
    (torch.randn(3, 4), torch.zeros(2, dtype=torch.long), "targets must be"),
    (torch.randn(3, 4), torch.zeros(3), "targets must be"),
    (torch.randn(3, 4), torch.tensor([0, 4, 1]), "target 4 of row 1 is outside"),
    (torch.randn(3, 4), torch.tensor([0, -2, 1]), "target -2 of row 1 is outside"),
])
def test_bad_input_is_refused_with_a_clear_error(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        cross_entropy(logits, targets, ignore_index=-1)


def test_the_gpt_trains_on_it():
    """GPT's training loss (return_logits=False) is F.cross_entropy's of its logits."""
    from retro.model import GPT, RetroConfig

    torch.manual_seed(0)
    model = GPT(RetroConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=101, block_size=24,
                            chunk_size=8, nbr_len=16, cca_layers=(1,)))
    idx = torch.randint(0, 101, (3, 24))
    targets = torch.randint(0, 101, (3, 24))
    targets[0, :5] = -1
    logits, loss = model(idx, targets)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1).item(), rel=1e-6)
