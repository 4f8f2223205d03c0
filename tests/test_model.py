import math

import pytest
import torch

from nanogpt.model import GPT, GPTConfig
from tests.conftest import tiny_gpt


def tiny(attention="auto", **kw) -> GPT:
    return tiny_gpt(attention=attention, **{"n_head": 4, "n_embd": 32, **kw})


@pytest.mark.parametrize("attention", ["flash", "manual", "bmm"])
def test_future_tokens_do_not_change_past_logits(attention):
    model = tiny(attention).eval()
    idx = torch.randint(0, 37, (2, 16))
    logits, _ = model(idx, idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 37, changed[:, t + 1:].shape)
        assert not torch.equal(changed, idx) or t == 15
        logits2, _ = model(changed, changed)
        torch.testing.assert_close(logits2[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(logits2[:, t + 1:], logits[:, t + 1:])


@pytest.mark.parametrize("other", ["flash", "bmm"])
def test_attention_paths_agree_with_the_manual_one_in_outputs_and_gradients(other):
    manual, fast = tiny("manual"), tiny(other)  # the same seed: the same weights
    idx = torch.randint(0, 37, (3, 16))
    tgt = torch.randint(0, 37, (3, 16))
    lm, loss_m = manual(idx, tgt)
    lf, loss_f = fast(idx, tgt)
    torch.testing.assert_close(lf, lm, rtol=0, atol=1e-5)
    loss_f.backward()
    loss_m.backward()
    for (name, pf), (_, pm) in zip(fast.named_parameters(), manual.named_parameters()):
        torch.testing.assert_close(pf.grad, pm.grad, rtol=0, atol=1e-5, msg=name)


def test_baby_gpt_has_nanogpts_parameter_count_and_tied_embeddings():
    model = GPT(GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384,
                          dropout=0.2, bias=False))
    assert f"{model.get_num_params() / 1e6:.2f}M" == "10.65M"
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model.get_num_params(non_embedding=False) - model.get_num_params() == 256 * 384


def test_initial_loss_is_close_to_uniform():
    model = tiny(vocab_size=65, block_size=64)
    idx = torch.randint(0, 65, (8, 64))
    _, loss = model(idx, torch.randint(0, 65, (8, 64)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_residual_projections_use_scaled_init():
    model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=8, n_head=2, n_embd=128))
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_without_targets_only_the_last_position_is_computed():
    model = tiny().eval()
    idx = torch.randint(0, 37, (2, 10))
    logits, loss = model(idx)
    assert loss is None and logits.shape == (2, 1, 37)
    full, _ = model(idx, idx)
    torch.testing.assert_close(logits[:, 0], full[:, -1])


def test_tiny_model_overfits_one_batch():
    model = tiny(vocab_size=20)
    idx = torch.randint(0, 20, (4, 16))
    tgt = torch.randint(0, 20, (4, 16))
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    for _ in range(300):
        _, loss = model(idx, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_optimizer_decays_exactly_the_matrices():
    model = tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_crop_block_size_keeps_the_first_positions():
    model = tiny()
    wpe = model.transformer.wpe.weight[:8].clone()
    model.crop_block_size(8)
    assert model.config.block_size == 8
    torch.testing.assert_close(model.transformer.wpe.weight, wpe)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)


def test_estimate_mfu_uses_the_given_peak():
    model = tiny()
    mfu = model.estimate_mfu(tokens_per_iter=1000, seconds_per_iter=1.0, peak_flops=1e12)
    assert mfu == pytest.approx(model.flops_per_token() * 1000 / 1e12)


@pytest.mark.parametrize("arch", [{}, {"positions": "rope", "norm": "rmsnorm",
                                       "tie_embeddings": False}])
def test_an_empty_gpt_loaded_with_weights_is_the_model_they_came_from(arch):
    model = tiny_gpt(**arch).eval()
    rng = torch.get_rng_state()
    empty = GPT.empty(model.config)
    assert torch.equal(torch.get_rng_state(), rng)  # no random initialisation
    empty.load_state_dict(model.state_dict())
    empty.eval()
    assert (empty.transformer.wte.weight is empty.lm_head.weight) == \
        model.config.tie_embeddings
    assert sum(p.numel() for p in empty.parameters()) == \
        sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad and p.device.type == "cpu" for p in empty.parameters())
    for name, buffer in model.named_buffers():
        assert torch.equal(dict(empty.named_buffers())[name], buffer), name
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        assert torch.equal(empty(idx, idx)[0], model(idx, idx)[0])


def test_loading_and_preparing_a_model_for_sampling_imports_no_compiler(tmp_path):
    """sample.py's start: a checkpoint loaded into GPT.empty, then packed for decoding. A
    random init of a meta tensor imports torch._dynamo, and to_empty imports sympy: 1.4 s
    of sample.py's 3 s start on a 2-core CPU, for nothing that runs."""
    import dataclasses
    import subprocess
    import sys

    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    model = tiny_gpt()
    tok = CharTokenizer.from_text("".join(chr(65 + i) for i in range(model.config.vocab_size)))
    save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict(), "tokenizer":
                                           tok.to_dict(),
                                           "model_args": dataclasses.asdict(model.config)})
    code = ("import sys\n"
            "from nanogpt.checkpoint import load_model\n"
            "from nanogpt.inference import for_decoding\n"
            f"model, _ = load_model({str(tmp_path)!r})\n"
            "for dtype in ('float32', 'auto'): for_decoding(model, dtype)\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
