"""attention='auto' (nanogpt.autotune) and decoding precision (nanogpt.inference): which path
and dtype are chosen, with a fake clock and fake CPU flags, and that choosing never changes
results where exactness is promised."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from conftest import tiny_args, tiny_gpt

from nanogpt import autotune, device, inference
from nanogpt.checkpoint import load_checkpoint
from nanogpt.config import parse_args
from nanogpt.model import CausalSelfAttention
from nanogpt.sampling import generate_tokens
from nanogpt.trainer import train
from tests.conftest import read_log


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # conftest restores the thread count afterwards


@pytest.fixture
def fake_costs(monkeypatch):
    """Set {path: seconds} that each attention call takes on a fake clock; the real attention
    still runs. Every shape is worth measuring; nothing measured before this test counts."""
    now, costs, calls = [0.0], {}, []
    real_attend = CausalSelfAttention.attend

    def attend(self, path, q, k, v):
        now[0] += costs.get(path, 0.0)
        calls.append(path)
        return real_attend(self, path, q, k, v)

    monkeypatch.setattr(CausalSelfAttention, "attend", attend)
    monkeypatch.setattr(autotune, "clock", lambda: now[0])
    monkeypatch.setattr(autotune, "MIN_WORK", 0)
    monkeypatch.setattr(autotune, "MEASURED_DTYPES", (torch.float32, torch.bfloat16))
    monkeypatch.setattr(autotune, "_measured", {})

    def set_costs(**seconds):
        costs.clear()
        costs.update(seconds)
        calls.clear()
        return calls

    return set_costs


def phase_paths(model) -> dict[str, str]:
    return {key.split("/")[2]: path for key, path in model.attention_plan.items()}


@pytest.mark.parametrize("fastest", ["flash", "bmm", "manual"])
def test_auto_takes_the_path_that_measures_fastest_in_each_phase(fake_costs, fastest):
    fake_costs(**{p: 1.0 if p == fastest else 3.0 for p in autotune.CANDIDATES})
    model = tiny_gpt()
    idx = torch.randint(0, 37, (2, 16))
    model(idx, idx)[1].backward()  # train
    with torch.no_grad():
        model.eval()(idx, idx)  # eval
        caches = model.make_kv_caches(2)
        model(idx[:, :4], kv_caches=caches)  # a first prefill is an eval
        model(idx[:, 4:9], kv_caches=caches, start_pos=4)  # prefill
        model(idx[:, 9:10], kv_caches=caches, start_pos=9)  # decode
    assert phase_paths(model) == dict.fromkeys(["train", "eval", "prefill", "decode"], fastest)


def test_the_rule_stays_unless_another_path_is_clearly_faster(fake_costs):
    fake_costs(flash=1.05, bmm=1.0, manual=2.0)  # 5% slower: within the margin
    model = tiny_gpt().eval()
    with torch.no_grad():
        model(torch.zeros(1, 16, dtype=torch.long))
    assert phase_paths(model) == {"eval": "flash"}
    assert autotune.pick({"flash": 1.2, "bmm": 1.0, "manual": 2.0}, "flash") == "bmm"
    assert autotune.pick({"flash": 1.0, "bmm": 0.95, "manual": 2.0}, "bmm") == "bmm"


def test_each_choice_is_measured_once_per_process(fake_costs):
    calls = fake_costs(flash=3.0, bmm=1.0, manual=2.0)
    idx = torch.zeros(2, 16, dtype=torch.long)
    with torch.no_grad():
        tiny_gpt().eval()(idx)
        measured = len(calls)
        second = tiny_gpt(seed=1).eval()
        second(idx)  # same device, dtype, phase and shape: no new measurement
    assert measured > 2 * len(autotune.CANDIDATES)  # warm-up and timed rounds of each path
    assert len(calls) == measured + second.config.n_layer  # the real forward only
    assert phase_paths(second) == {"eval": "bmm"}


def test_tiny_attention_and_other_devices_are_not_measured(fake_costs, monkeypatch):
    calls = fake_costs(flash=3.0, bmm=1.0)
    monkeypatch.setattr(autotune, "MIN_WORK", 1 << 19)
    model = tiny_gpt().eval()
    with torch.no_grad():
        model(torch.zeros(2, 16, dtype=torch.long))  # B*H*Tq*Tk*D = 8192 multiply-adds
    assert calls == ["flash"] * model.config.n_layer
    assert not autotune.measurable(torch.zeros(1, device="meta"))  # not on a CPU
    assert autotune.measurable(torch.zeros(1))
    monkeypatch.undo()  # float32 is not measured by default: the rule was as fast there
    assert not autotune.measurable(torch.zeros(1))
    assert autotune.measurable(torch.zeros(1, dtype=torch.bfloat16))


def test_measuring_draws_no_random_numbers_and_changes_no_result(fake_costs):
    """Training with dropout: auto measures (and runs dropout in every candidate), then
    gives bit for bit what the chosen path gives, from the same RNG state."""
    fake_costs(flash=3.0, bmm=2.0, manual=1.0)
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for attention in ("auto", "manual"):
        model = tiny_gpt(attention=attention, dropout=0.2).train()
        torch.manual_seed(5)
        _, loss = model(idx, idx)
        loss.backward()
        results.append((loss, model.lm_head.weight.grad, torch.rand(3)))
        if attention == "auto":
            assert phase_paths(model) == {"train+dropout": "manual"}
    (loss_a, grad_a, next_a), (loss_m, grad_m, next_m) = results
    assert torch.equal(loss_a, loss_m) and torch.equal(grad_a, grad_m)
    assert torch.equal(next_a, next_m)  # the RNG is where the chosen path alone left it


def test_resume_keeps_the_measured_paths(fake_costs, monkeypatch, data_dir, tmp_path):
    """The plan is part of the checkpoint: a resume takes the paths the run started with,
    whatever a new measurement would say, and continues exactly."""
    fake_costs(flash=3.0, bmm=1.0, manual=2.0)
    common = dict(max_iters=10, eval_interval=5, dropout=0.1, always_save_checkpoint=True)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args(tiny_args(data_dir, straight, **common)))
    train(parse_args(tiny_args(data_dir, split, **{**common, "max_iters": 5})))
    plan = load_checkpoint(split / "ckpt.pt")["attention_plan"]
    assert set(plan.values()) == {"bmm"} and {k.split("/")[2] for k in plan} >= {
        "train+dropout", "eval"}

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(autotune, "_measured", {})  # as in a new process...
    monkeypatch.setattr(autotune, "measure", refuse)  # ...which must not need to measure
    train(parse_args(tiny_args(data_dir, split, **common, init_from="resume")))
    losses = lambda d: [(r["iter"], r["loss"]) for r in read_log(d, "train")]  # noqa: E731
    assert losses(straight) == losses(split)
    assert load_checkpoint(split / "ckpt.pt")["attention_plan"] == plan


# ---- decoding precision ----

@pytest.mark.parametrize("bf16_units, kernels, expected", [
    (True, "AVX512", "bfloat16"), (False, "AVX512", "float32"), (False, "AVX2", "bfloat16"),
    (False, "DEFAULT", "float32"), (False, "NO AVX", "float32"), (True, "DEFAULT", "bfloat16")])
def test_decoding_takes_bf16_where_the_cpu_decodes_faster_in_it(monkeypatch, bf16_units,
                                                                 kernels, expected):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: bf16_units)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    assert device.resolve_decode_dtype("auto", "cpu") == expected
    batched = "bfloat16" if bf16_units else "float32"  # several rows: bf16 only with units
    assert device.resolve_decode_dtype("auto", "cpu", batch_size=4) == batched
    assert inference.decode_dtype(tiny_gpt(), "auto", batch_size=4) == batched
    monkeypatch.setattr(torch, "__version__", "2.12.1+cpu")  # before the torch measured
    assert device.resolve_decode_dtype("auto", "cpu") == ("bfloat16" if bf16_units else
                                                           "float32")
    monkeypatch.undo()
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: bf16_units)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    assert device.resolve_dtype("auto", "cpu") == ("bfloat16" if bf16_units else "float32")
    assert device.resolve_decode_dtype("float32", "cpu") == "float32"
    model = tiny_gpt().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = inference.for_decoding(model)
    assert prepared.prepared_for_decoding == expected
    assert prepared.lm_head.weight.dtype == getattr(torch, expected) and not prepared.training
    assert inference.for_decoding(prepared) is prepared  # prepared once
    assert inference.for_decoding(model, "float32").lm_head.weight.dtype == torch.float32
    assert model.training and all(torch.equal(v, before[k])
                                  for k, v in model.state_dict().items())  # left alone
    assert inference.decode_dtype(model.to(torch.bfloat16)) == "bfloat16"  # the model's own


@pytest.mark.parametrize("packing", [True, False])
def test_a_model_prepared_in_float32_computes_what_the_model_does(monkeypatch, packing):
    monkeypatch.setattr(inference, "onednn_packing_works", lambda dtype: packing)
    model = tiny_gpt().eval()
    prepared = inference.for_decoding(model, "float32")
    linears = [type(m).__name__ for m in prepared.modules() if "Linear" in type(m).__name__]
    assert set(linears) == {"PackedLinear" if packing else "Linear"}
    assert prepared.transformer.wte.weight is prepared.lm_head.weight  # still tied
    idx = torch.randint(0, 37, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(prepared(idx, idx)[0], model(idx, idx)[0], rtol=1e-5,
                                   atol=1e-5)


def avx2_without_bf16_units(monkeypatch) -> None:
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")


@pytest.mark.parametrize("packing", [True, False])
def test_bf16_without_bf16_units_multiplies_one_row_in_bf16_and_more_in_float32(monkeypatch,
                                                                                packing):
    avx2_without_bf16_units(monkeypatch)
    monkeypatch.setattr(inference, "onednn_packing_works", lambda dtype: packing)
    model = tiny_gpt(n_embd=32).eval()
    prepared = inference.for_decoding(model, "bfloat16")
    linears = {type(m).__name__ for m in prepared.modules() if "Linear" in type(m).__name__}
    assert linears == {"GemvLinear"}
    layer, dense = prepared.transformer.h[0].mlp.c_fc, model.transformer.h[0].mlp.c_fc
    assert layer.weight.dtype == torch.bfloat16 and layer.weight.data_ptr() != \
        dense.weight.data_ptr()
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    weight, bias = dense.weight.detach().bfloat16(), dense.bias.detach().bfloat16()
    with torch.no_grad():
        one = layer(x[:1, :1])  # one row: the bf16 matrix-vector product itself
        assert torch.equal(one, F.linear(x[:1, :1], weight, bias))
        assert layer.packed32 is None and layer.weight32 is None  # no float32 copy yet
        many = layer(x)  # several rows: float32 on the same bf16 weights, rounded to bf16
        want = F.linear(x.float(), weight.float(), bias.float())
        assert many.dtype == torch.bfloat16
        assert (layer.packed32 is not None) == packing and (layer.weight32 is None) == packing
        if packing:  # oneDNN's float32 sums, in its own order: at most one bf16 step off
            torch.testing.assert_close(many, want.bfloat16(), rtol=2 ** -7, atol=1e-6)
        else:
            assert torch.equal(many, want.bfloat16())
        torch.testing.assert_close(many[:1, :1], one, rtol=1e-2, atol=1e-2)  # same function
    assert model.transformer.h[0].mlp.c_fc is dense and dense.weight.dtype == torch.float32


def test_onednn_packing_check_leaves_the_global_rng_alone(monkeypatch):
    monkeypatch.setattr(inference, "_PACKING_WORKS", {})
    monkeypatch.setattr(inference, "_FUSION_WORKS", {})
    state = torch.get_rng_state()
    inference.onednn_fusion_works(torch.float32)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("gemv", [True, False])
def test_bf16_decoding_is_close_to_float32_and_cached_equals_uncached(monkeypatch, gemv):
    if gemv:
        avx2_without_bf16_units(monkeypatch)
    else:  # plain bf16 Linear (or oneDNN-packed, where this CPU packs bf16)
        monkeypatch.setattr(device, "cpu_bf16_gemv", lambda: False)
    model = tiny_gpt(vocab_size=11).eval()
    with torch.no_grad():  # peaked logits: greedy never hinges on rounding
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    idx = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = model(idx)
        got, _ = inference.for_decoding(model, "bfloat16")(idx)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())
    kinds = {type(m).__name__ for m in inference.for_decoding(model, "bfloat16").modules()}
    assert ("GemvLinear" in kinds) == gemv
    for rows in (idx, idx[:1]):  # a batch, and one row (GemvLinear's bf16 product)
        runs = [torch.stack(list(generate_tokens(model, rows, 40, temperature=0.0, dtype=dtype,
                                                 use_cache=cache)), 1)
                for dtype in ("float32", "bfloat16") for cache in (True, False)]
        assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])


def test_bad_decode_dtype_is_a_user_error():
    from nanogpt.sampling import SamplingError

    with pytest.raises(SamplingError, match="dtype must be one of"):
        generate_tokens(tiny_gpt(), torch.zeros(1, 1, dtype=torch.long), 3, dtype="int8")
