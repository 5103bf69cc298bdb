"""float32 linears through oneDNN for training (`mae_core.onednn`): the same outputs and
gradients as torch's own `F.linear`, for a layer and a whole MAE step; nothing changes
outside the context, under autocast or where it does not apply; `mae train` uses it on a
CPU in fp32 and says so, and `--no-onednn-linears` leaves torch's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mae_core import create_model, onednn
from mae_core.onednn import OneDNNLinear, onednn_linears, why_not
from mae_core.train import Trainer
from tests.mae_core.test_train import run_cfg
from tests.torch_calls import CountCalls

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(
    onednn.linear_op() is None or not torch.backends.mkldnn.is_available(),
    reason="this torch has no oneDNN",
)


def _graph_names(t: torch.Tensor) -> set[str]:
    """The names of every node of `t`'s autograd graph."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (), (3, 2, 4)])
# (in, out): narrowing, and widening, where the weight's gradient copies the input's rows
# transposed rather than the output gradient's (`onednn._weight_grad`; not for one row)
@pytest.mark.parametrize(("width", "height"), [(48, 24), (16, 96)])
def test_a_layer_s_output_and_gradients_are_torch_s(
    bias: bool, shape: tuple, width: int, height: int
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, width, generator=g, requires_grad=True)
    w = torch.randn(height, width, generator=g, requires_grad=True)
    b = torch.randn(height, generator=g, requires_grad=True) if bias else None
    up = torch.randn(*shape, height, generator=g)
    want = F.linear(x, w, b)
    (want * up).sum().backward()
    expected = [t.grad.clone() for t in (x, w, b) if t is not None]
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    with onednn_linears():
        got = F.linear(x, w, b)
    assert "OneDNNLinearBackward" in _graph_names(got)
    (got * up).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for grad, exp in zip((t.grad for t in (x, w, b) if t is not None), expected, strict=True):
        torch.testing.assert_close(grad, exp, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("rows", "width", "height", "copied"),
    [(35, 16, 96, "rows"), (35, 48, 24, "grad"), (1, 16, 96, "grad"), (4160, 128, 512, "rows")],
)
def test_the_weight_gradient_copies_the_smaller_operand(
    monkeypatch: pytest.MonkeyPatch, rows: int, width: int, height: int, copied: str
) -> None:
    """dW = g.T @ x: oneDNN copies its first operand transposed, so `_weight_grad` hands it
    the smaller of g (N x out) and x (N x in), counting the transposed result's copy; the
    answer is torch's, in the weight's own layout."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g)
    grad = torch.randn(rows, height, generator=g)
    firsts = []
    product = onednn._product
    monkeypatch.setattr(onednn, "_product", lambda a, *r: firsts.append(a.shape) or product(a, *r))
    dw = onednn._weight_grad(grad, x)
    assert firsts == [(width, rows) if copied == "rows" else (height, rows)]
    assert dw.shape == (height, width) and dw.is_contiguous()
    torch.testing.assert_close(dw, grad.t() @ x, rtol=1e-5, atol=1e-3)


def test_a_frozen_weight_gets_no_gradient_and_the_input_one() -> None:
    """A linear probe's shape of work: the weight frozen, only the input's gradient."""
    x = torch.randn(6, 32, requires_grad=True)
    w = torch.randn(8, 32)
    with onednn_linears():
        y = F.linear(x, w)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(6, 8) @ w, rtol=1e-5, atol=1e-5)
    assert w.grad is None


@pytest.mark.parametrize(
    "bias_of",
    [
        lambda n: torch.randn(2 * n)[::2],  # strided
        lambda n: torch.tensor(0.5),  # 0-D, broadcast by torch
        lambda n: torch.randn(1).expand(n),  # expanded: stride 0
        lambda n: torch.randn(1, n),  # 2-D, broadcast by torch
    ],
)
def test_an_unusual_bias_gives_torch_s_answer(bias_of) -> None:
    x, w = torch.randn(5, 16), torch.randn(8, 16)
    bias = bias_of(8)
    with onednn_linears():
        got = F.linear(x, w, bias)
    torch.testing.assert_close(got, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_keywords_wrong_shapes_and_in_place_use_are_as_torch_s() -> None:
    x = torch.randn(5, 16, requires_grad=True)
    w, b = torch.randn(8, 16, requires_grad=True), torch.randn(8)
    with onednn_linears():
        by_keyword = F.linear(x, weight=w, bias=b)  # as timm's beit, eva and swin v2 call it
        all_keywords = F.linear(input=x, weight=w)
        assert "OneDNNLinearBackward" in _graph_names(by_keyword) & _graph_names(all_keywords)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):  # torch's own words
            F.linear(torch.randn(5, 15), w)
        out = F.linear(x, w, b)
        torch.relu_(out)  # an in-place op on the output (ReLU(inplace=True))
    torch.testing.assert_close(by_keyword, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, F.linear(x, w, b).relu(), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    torch.testing.assert_close(
        x.grad, (F.linear(x, w, b) > 0).float() @ w.detach(), rtol=1e-5, atol=1e-5
    )
    # a frozen weight: the input is not kept, so changing it in place is allowed, as in torch
    h = x * 1.0
    with onednn_linears():
        y = F.linear(h, w.detach())
    h.add_(1.0)
    y.sum().backward()


def test_a_whole_mae_step_matches_torch_s_and_runs_through_onednn() -> None:
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch8", img_size=32, depth=2, decoder_depth=1).train()
    x = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, model.config.num_patches)
    loss = model(x, mask_ratio=0.75, noise=noise).loss
    loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with CountCalls() as mode, onednn_linears():
        got = model(x, mask_ratio=0.75, noise=noise).loss
    got.backward()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert mode.linear == linears  # every linear of the forward, once (the loss's path)
    assert "OneDNNLinearBackward" in _graph_names(got)
    torch.testing.assert_close(got, loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if name in want:
            torch.testing.assert_close(p.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_outside_the_context_under_autocast_or_off_nothing_changes() -> None:
    x, w = torch.randn(4, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    assert "OneDNNLinearBackward" not in _graph_names(F.linear(x, w))
    with onednn_linears(enabled=False):
        assert "OneDNNLinearBackward" not in _graph_names(F.linear(x, w))
    with onednn_linears(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.linear(x, w)  # autocast's bf16 product (oneDNN's already)
    assert y.dtype == torch.bfloat16 and "OneDNNLinearBackward" not in _graph_names(y)
    with onednn_linears():
        y = F.linear(x.double(), w.double())  # float64: torch's
    assert y.dtype == torch.float64 and "OneDNNLinearBackward" not in _graph_names(y)
    assert OneDNNLinear.apply(x, w, None).shape == (4, 8)


def test_where_it_does_not_apply_says_why() -> None:
    assert why_not(CPU, torch.float32) is None
    assert why_not(torch.device("cuda"), torch.float32) == "CPU only"
    assert why_not(CPU, torch.bfloat16).startswith("float32 only")
    assert why_not(CPU, torch.float32, compiled=True).startswith("the model is compiled")
    torch.backends.mkldnn.enabled = False  # (its flags() also sets TF32 and warns)
    try:
        assert "oneDNN is turned off" in why_not(CPU, torch.float32)
        x, w = torch.randn(4, 16, requires_grad=True), torch.randn(8, 16)
        with onednn_linears():  # a no-op then
            assert "OneDNNLinearBackward" not in _graph_names(F.linear(x, w))
    finally:
        torch.backends.mkldnn.enabled = True
    assert onednn.linear_op() is not None  # this torch has it: the tests above ran it


@pytest.mark.parametrize("on", [True, False])
def test_mae_train_uses_it_on_a_cpu_in_fp32_and_says_so(
    cifar_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, on: bool
) -> None:
    caplog.set_level("INFO", logger="mae_core.train")
    trainer = Trainer(run_cfg(cifar_folder, tmp_path / "run", max_steps=2, onednn_linears=on))
    with CountCalls() as mode:
        trainer.run()
    said = "linear layers: oneDNN's" if on else "linear layers: torch's, off (--no-onednn-linears)"
    assert said in caplog.text
    assert (mode.linear > 0) == on, mode.linear
