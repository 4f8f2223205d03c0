"""The cheap CPU dropout: keep rate, scaling, gradients, repeatability, where it is used."""

import pytest
import torch
from torch.nn import functional as F

from nanogpt import model as model_module
from nanogpt.dropout import Dropout, dropout, keep_mask, keep_scale
from nanogpt.model import GPT
from tests.conftest import tiny_gpt


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_keep_rate_is_one_minus_p_in_every_16_bit_lane(p):
    torch.manual_seed(0)
    mask = keep_mask((4, 250_000), p)
    assert mask.dtype == torch.bool and mask.shape == (4, 250_000)
    assert mask.float().mean().item() == pytest.approx(1 - p, abs=0.002)
    # each int64 draw feeds four consecutive elements; a biased lane would show here
    lanes = mask.view(-1, 4).float().mean(dim=0)
    torch.testing.assert_close(lanes, torch.full((4,), 1 - p), rtol=0, atol=0.004)


def test_odd_sizes_and_the_rounded_probability():
    torch.manual_seed(0)
    assert keep_mask((3, 5, 7), 0.3).shape == (3, 5, 7)
    assert keep_scale(0.2) == pytest.approx(1 / 0.8, rel=1e-4)
    assert keep_scale(0.0) == 1.0


def test_kept_values_are_scaled_dropped_are_zero_and_the_mean_is_kept():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    y = dropout(x, 0.2)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * keep_scale(0.2))
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.005)


def test_gradient_is_the_same_mask_times_the_scale():
    torch.manual_seed(0)
    x = (torch.rand(64, 300) + 0.5).requires_grad_()
    y = dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    expected = g * (y != 0) * keep_scale(0.3)
    torch.testing.assert_close(x.grad, expected)


def test_masks_follow_torch_manual_seed():
    x = torch.ones(10_000)
    torch.manual_seed(5)
    a = dropout(x, 0.2)
    torch.manual_seed(5)
    b = dropout(x, 0.2)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_eval_mode_and_p_zero_pass_the_input_through():
    x = torch.randn(8, 8)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x


def test_fast_false_is_torch_dropout():
    x = torch.randn(100, 100)
    torch.manual_seed(3)
    ours = Dropout(0.25, fast=False).train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, F.dropout(x, 0.25, training=True), rtol=0, atol=0)


def _gpt(attention: str, fast: bool) -> GPT:
    return tiny_gpt(vocab_size=20, dropout=0.2, attention=attention, fast_dropout=fast)


def test_auto_attention_trains_through_the_bmm_path_with_cpu_dropout(monkeypatch):
    """SDPA's CPU fallback draws torch's slow masks; auto takes the bmm path instead and
    gives exactly what attention='bmm' gives for the same seed."""
    idx = torch.randint(0, 20, (3, 16))
    manual = _gpt("bmm", True).train()
    torch.manual_seed(1)
    manual_logits, _ = manual(idx, idx)

    def refuse(*args, **kwargs):
        raise AssertionError("scaled_dot_product_attention ran during CPU dropout training")

    with monkeypatch.context() as m:
        m.setattr(model_module.F, "scaled_dot_product_attention", refuse)
        model = _gpt("auto", True).train()
        torch.manual_seed(1)
        auto_logits, _ = model(idx, idx)
    torch.testing.assert_close(auto_logits, manual_logits, rtol=0, atol=0)

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model.eval()(idx, idx)  # no dropout in eval: the fused kernel again
    _gpt("auto", False).train()(idx, idx)  # torch's dropout: SDPA as before
    assert len(calls) == 4


def test_a_gpt_with_fast_dropout_still_learns():
    model = _gpt("auto", True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 20, (4, 16))
    first = None
    for _ in range(60):
        _, loss = model(idx, idx)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 3


def test_bf16_autocast_training_step_through_the_manual_path():
    """CPUs with AMX train in bf16 autocast: the causal bias, the masks and the scale must
    follow the autocast dtype, and the gradients stay finite float32."""
    model = _gpt("auto", True).train()
    idx = torch.randint(0, 20, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads)
