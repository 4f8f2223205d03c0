"""GPU paths: flash attention, bf16 autocast, torch.compile, fused AdamW (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanogpt import model as model_module
from nanogpt.config import parse_args
from nanogpt.device import autocast
from nanogpt.model import GPT
from nanogpt.trainer import train
from tests.conftest import cuda, read_log, tiny_args, tiny_gpt, train_losses

pytestmark = cuda

DEVICE = "cuda"


def cuda_gpt(**overrides) -> GPT:
    # head size 64: the flash kernel's sweet spot
    return tiny_gpt(**{"block_size": 64, "vocab_size": 65, "n_embd": 128, **overrides}).to(DEVICE)


def test_flash_attention_kernel_runs_and_manual_path_does_not(monkeypatch):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("is_causal"))
        return real_sdpa(*args, **kwargs)

    def no_manual(*args, **kwargs):
        raise AssertionError("the manual attention path ran")

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(model_module, "_causal_mask", no_manual)
    gpt = cuda_gpt(attention="auto")
    idx = torch.randint(65, (4, 64), device=DEVICE)
    # only the flash backend is allowed: if it could not take these inputs, SDPA would raise
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), autocast(DEVICE, "bfloat16"):
        _, loss = gpt(idx, idx)
    loss.backward()
    assert calls == [True, True]  # one causal call per layer
    assert all(p.grad is not None for p in gpt.parameters())


def test_bf16_autocast_trains_with_fp32_master_weights(data_dir, tmp_path):
    gpt = cuda_gpt()
    with autocast(DEVICE, "bfloat16"):
        logits, _ = gpt(torch.zeros(1, 8, dtype=torch.long, device=DEVICE))
    assert logits.dtype == torch.bfloat16  # autocast really runs the matmuls in bf16

    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, device=DEVICE, dtype="bfloat16", compile=False,
                               max_iters=60, eval_interval=30, eval_iters=10)))
    val = [r["val_loss"] for r in read_log(out, "eval")]
    assert len(val) == 3 and val[-1] < val[0] - 0.5  # learning, not just running
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())
    assert ckpt["config"]["dtype"] == "bfloat16"


def test_compiled_training_matches_eager(data_dir, tmp_path):
    import torch._dynamo

    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        out = tmp_path / f"compile_{compiled}"
        train(parse_args(tiny_args(data_dir, out, device=DEVICE, dtype="float32",
                                   compile=compiled, max_iters=10, eval_interval=10)))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == compiled  # compile=True really went through dynamo
        losses[compiled] = train_losses(out)
    assert len(losses[True]) == 10
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)


def test_fused_adamw_on_cuda():
    gpt = cuda_gpt()
    optimizer = gpt.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cuda")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True
    before = gpt.lm_head.weight.detach().clone()
    idx = torch.randint(65, (2, 16), device=DEVICE)
    gpt(idx, idx)[1].backward()
    optimizer.step()  # the fused kernel accepts these parameters
    assert not torch.equal(before, gpt.lm_head.weight)


def test_training_steps_never_wait_for_the_gpu(data_dir):
    """Between log intervals the CPU queues step after step: no host-device sync."""
    from nanogpt import trainer
    from nanogpt.data import open_dataset
    from nanogpt.distributed import DistInfo

    cfg = parse_args(tiny_args(data_dir, "unused", device=DEVICE, dtype="bfloat16",
                               gradient_accumulation_steps=2))
    data = open_dataset(data_dir, "shakespeare_char")
    state = trainer.build_state(cfg, data, None, DEVICE, "bfloat16")
    sampler = data.sampler("train", cfg.block_size, cfg.batch_size, cfg.seed, DEVICE)
    watch = trainer.DivergenceWatch(DEVICE)

    def step(i: int) -> None:
        batches = trainer.micro_batches(sampler, cfg.seed, i, 2, DistInfo())
        loss, norm = trainer.train_step(state.model, state.optimizer, batches, lr=1e-3,
                                        grad_clip=1.0, ctx=autocast(DEVICE, "bfloat16"))
        watch.record(i, loss, norm)

    step(0)  # first use: allocations, library handles
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    watch.check(DistInfo(), "none")  # the one read, as at a log interval
