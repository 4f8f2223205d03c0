"""nanogpt.decode_step: the flat decoding forward computes what GPT.forward computes, for
every architecture switch, packed or not; a changed or subclassed model decodes through its
own forward."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt
from torch import nn

from nanogpt import decode_step as ds
from nanogpt import inference
from nanogpt.lora import add_adapters
from nanogpt.model import MLP, Block
from nanogpt.sampling import generate_tokens

ARCHITECTURES = {
    "gpt2": {},
    "gpt2-no-bias-tanh": {"bias": False, "gelu_approximate": "tanh"},
    "modern": {"positions": "rope", "norm": "rmsnorm", "qk_norm": True, "activation": "relu2",
               "tie_embeddings": False, "logit_softcap": 15.0, "bias": False},
    "manual-attention": {"attention": "manual"},
    "bmm-attention": {"attention": "bmm", "positions": "rope"},
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # conftest restores the thread count afterwards


def prepared(packing: str, monkeypatch, **arch) -> nn.Module:
    """A float32 model prepared for decoding with its Linears 'fused' (packed, with post-ops),
    'packed' (without post-ops) or 'plain'."""
    monkeypatch.setattr(inference, "onednn_packing_works", lambda dtype: packing != "plain")
    monkeypatch.setattr(ds, "onednn_fusion_works", lambda dtype: packing == "fused")
    model = tiny_gpt(vocab_size=23, **arch).eval()
    with torch.no_grad():  # larger weights than init: every layer matters to the logits
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return inference.for_decoding(model, "float32")


def logits_both_ways(model: nn.Module, idx: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Logits of a prefill of idx and of `steps` one-token steps, through GPT.forward and
    through DecodeStep, each over its own KV caches: [forward..., flat...] pairs."""
    pairs = []
    with torch.no_grad():
        for step in (ds.forward_step(model), ds.DecodeStep(model)):
            caches = model.make_kv_caches(idx.size(0), inference.kv_cache_dtype(model))
            out = [step(idx, caches, 0)]
            for i in range(steps):
                nxt = idx[:, i % idx.size(1):][:, :1]
                out.append(step(nxt, caches, idx.size(1) + i))
            pairs.append(torch.stack(out))
    return pairs


@pytest.mark.parametrize("packing", ["fused", "packed", "plain"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_flat_step_equals_the_model_forward_in_float32(monkeypatch, arch, packing):
    works = {"fused": inference.onednn_fusion_works, "packed": inference.onednn_packing_works}
    if packing in works and not works[packing](torch.float32):
        pytest.skip(f"this torch cannot run oneDNN's {packing} linear")
    model = prepared(packing, monkeypatch, **ARCHITECTURES[arch])
    assert type(model.transformer.h[0].mlp.c_fc).__name__ == \
        ("Linear" if packing == "plain" else "PackedLinear")
    idx = torch.randint(0, 23, (2, 5), generator=torch.Generator().manual_seed(0))
    want, got = logits_both_ways(model, idx, steps=16 - 5)  # up to block_size
    assert want.std() > 0.1  # logits that depend on the weights and the tokens
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ds.decode_step(model).__class__ is ds.DecodeStep


def test_flat_step_in_bf16_is_close_to_the_forward():
    model = tiny_gpt(vocab_size=23).eval()
    bf16 = inference.for_decoding(model, "bfloat16")
    idx = torch.randint(0, 23, (2, 5), generator=torch.Generator().manual_seed(0))
    want, got = logits_both_ways(bf16, idx, steps=4)
    scale = want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05 * scale)


def test_flat_step_runs_lora_adapters(monkeypatch):
    model = tiny_gpt(vocab_size=23)
    add_adapters(model, rank=2, alpha=4.0, targets=["c_attn", "mlp.c_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # adapters that change the output
    state = torch.get_rng_state()
    prepared = inference.for_decoding(model.eval(), "float32")
    assert torch.equal(torch.get_rng_state(), state)  # merging draws no random init
    assert not any("lora" in name for name, _ in prepared.named_parameters())  # merged
    idx = torch.randint(0, 23, (1, 4), generator=torch.Generator().manual_seed(1))
    for decoded in (prepared, model.eval()):  # merged; and adapters run by their own forward
        want, got = logits_both_ways(decoded, idx, steps=3)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the adapted function, not the base model's
        adapted, _ = model(idx)
        torch.testing.assert_close(prepared(idx)[0], adapted, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(prepared.transformer.h[0].attn.c_attn.weight,
                                  model.transformer.h[0].attn.c_attn.weight, atol=1e-3)


class DoubleResidualBlock(Block):
    def forward(self, x, kv_cache=None, rope=None):
        return 2 * super().forward(x, kv_cache, rope)


def greedy_by_forward(model: nn.Module, idx: torch.Tensor, n: int) -> torch.Tensor:
    """nanoGPT's loop: the whole sequence through the model each step, argmax."""
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("change", ["subclassed block", "edited MLP.forward",
                                    "renamed MLP field"])
def test_a_changed_model_decodes_through_its_own_forward(monkeypatch, change):
    model = tiny_gpt(vocab_size=23, block_size=32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)  # peaked logits: greedy never hinges on rounding
    if change == "subclassed block":
        for i, block in enumerate(model.transformer.h):
            swapped = DoubleResidualBlock(model.config)
            swapped.load_state_dict(block.state_dict())
            swapped.attn.plan = block.attn.plan
            model.transformer.h[i] = swapped
    elif change == "edited MLP.forward":  # as if model.py had been edited in place
        monkeypatch.setattr(MLP, "forward",
                            lambda self, x: self.c_proj(torch.tanh(self.c_fc(x))))
    else:  # the flat step cannot even read it: MLP.gelu is now MLP.act
        for block in model.transformer.h:
            block.mlp.act = block.mlp.gelu
            del block.mlp.gelu
        monkeypatch.setattr(MLP, "forward", lambda self, x: self.c_proj(self.act(self.c_fc(x))))
    prepared = inference.for_decoding(model, "float32")
    assert not isinstance(ds.decode_step(prepared), ds.DecodeStep)
    idx = torch.randint(0, 23, (1, 3), generator=torch.Generator().manual_seed(2))
    got = torch.stack(list(generate_tokens(model, idx, 20, temperature=0.0, dtype="float32")),
                      dim=1)
    assert torch.equal(got, greedy_by_forward(model, idx, 20)[:, 3:])


def count_checks(monkeypatch) -> list[int]:
    """A list that grows by one per agreement check (conftest empties their cache per test)."""
    calls, agrees = [], ds._agrees
    monkeypatch.setattr(ds, "_agrees", lambda *a: calls.append(1) or agrees(*a))
    return calls


def test_the_agreement_check_runs_once_for_models_of_the_same_code(monkeypatch):
    calls = count_checks(monkeypatch)
    idx = torch.zeros(1, 1, dtype=torch.long)
    for seed in (0, 0, 1):  # the same model twice, then another one of the same config
        model = tiny_gpt(seed, vocab_size=23).eval()
        list(generate_tokens(model, idx, 2, temperature=0.0, dtype="float32"))
        assert isinstance(ds.decode_step(inference.for_decoding(model, "float32")),
                          ds.DecodeStep)
    assert len(calls) == 1
    list(generate_tokens(model, idx, 2, temperature=0.0, dtype="bfloat16"))  # another dtype
    list(generate_tokens(tiny_gpt(vocab_size=23, n_head=4).eval(), idx, 2, dtype="float32"))
    assert len(calls) == 3


@pytest.mark.parametrize("change", ["patched class method", "forward set on one module",
                                    "patched function of nanogpt.model", "forward hook"])
def test_a_change_after_a_first_check_is_checked_again(monkeypatch, change):
    """The answer is kept per code: a method patched later (a notebook's experiment) is a new
    question, and the model then decodes through its own forward."""
    calls = count_checks(monkeypatch)
    model = tiny_gpt(vocab_size=23, block_size=32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)  # peaked logits: greedy never hinges on rounding
    idx = torch.randint(0, 23, (1, 3), generator=torch.Generator().manual_seed(2))
    list(generate_tokens(model, idx, 2, temperature=0.0, dtype="float32"))
    assert len(calls) == 1
    if change == "patched class method":
        monkeypatch.setattr(MLP, "forward", lambda self, x: self.c_proj(torch.tanh(self.c_fc(x))))
    elif change == "forward set on one module":
        mlp = model.transformer.h[1].mlp
        mlp.forward = lambda x: mlp.c_proj(torch.tanh(mlp.c_fc(x)))
    elif change == "forward hook":  # e.g. steering: the hook's module output is changed
        model.transformer.h[1].mlp.register_forward_hook(lambda module, args, out: -out)
    else:
        import nanogpt.model

        monkeypatch.setattr(nanogpt.model, "soft_cap", lambda logits, cap: 2 * logits)
    assert not isinstance(ds.decode_step(inference.for_decoding(model, "float32")),
                          ds.DecodeStep)
    assert len(calls) == 2
    got = torch.stack(list(generate_tokens(model, idx, 20, temperature=0.0, dtype="float32")),
                      dim=1)
    assert torch.equal(got, greedy_by_forward(model, idx, 20)[:, 3:])


def test_a_check_that_could_not_run_is_not_kept(monkeypatch):
    """A passing failure (out of memory, say) decodes through the forward this once only."""
    agrees = ds._agrees

    def fails(model, flat):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(ds, "_agrees", fails)
    model = inference.for_decoding(tiny_gpt(vocab_size=23).eval(), "float32")
    assert not isinstance(ds.decode_step(model), ds.DecodeStep)
    monkeypatch.setattr(ds, "_agrees", agrees)
    assert isinstance(ds.decode_step(model), ds.DecodeStep)


def test_a_model_prepared_in_one_dtype_is_not_silently_decoded_in_another():
    prepared = inference.for_decoding(tiny_gpt(), "bfloat16")
    assert inference.for_decoding(prepared, "auto") is prepared
    with pytest.raises(ValueError, match="prepared for decoding in bfloat16.*made from"):
        inference.for_decoding(prepared, "float32")


def test_padded_rows_rounds_up_within_the_room_left():
    assert [ds.padded_rows(t, 256) for t in (1, 2, 16, 17, 193, 256)] == [1, 16, 16, 32, 208, 256]
    assert ds.padded_rows(300, 1024) == 320 and ds.padded_rows(1100, 2048) == 1280
    assert ds.padded_rows(193, 200) == 200  # no further than the cache has room for
    assert ds.padded_rows(5, 3) == 5  # never fewer than the tokens
    assert len({ds.padded_rows(t, 256) for t in range(1, 257)}) == 17


def test_uncached_decoding_multiplies_a_handful_of_row_counts():
    """oneDNN keeps what it built for each number of rows a matmul had (0.4 MB each for the
    baby GPT): one pass per window length made RSS grow by 0.5 GB; padded, a 64-token window
    makes 4 row counts, plus the single row of decoding."""
    model = tiny_gpt(vocab_size=23, block_size=64).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    with torch.profiler.profile(record_shapes=True) as prof:
        list(generate_tokens(model, prompt, 40, temperature=0, use_cache=False))
    rows = {e.input_shapes[0][1] for e in prof.events()
            if e.name in ("aten::linear", "mkldnn::_linear_pointwise")
            and len(e.input_shapes[0]) == 3 and e.input_shapes[0][0] == 1}  # the sample's row
    assert rows == {1, 16, 32, 48}  # windows of 1..41 tokens
