"""Sampling: KV cache exactness, logits filtering, seeds, stop strings, batching, streaming, CLI."""

from __future__ import annotations

import pytest
import torch
from conftest import run_script, tiny_args, tiny_gpt

from nanogpt.checkpoint import checkpoint_path, save_checkpoint
from nanogpt.cli import sample_main
from nanogpt.data import CharTokenizer
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.sampling import (
    SamplingError,
    TextStream,
    _CachedDecoder,
    _UncachedDecoder,
    draw,
    filter_logits,
    generate_text,
    generate_tokens,
    sample_next,
    stream,
)

BLOCK = 16
ATTENTIONS = ("flash", "manual", "bmm")
SEPARATOR = "\n---------------\n"
NEG_INF = float("-inf")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; on a busy CPU, idle threads spinning cost seconds."""
    torch.set_num_threads(1)  # conftest restores the thread count afterwards


def peaked_gpt(attention: str = "auto", block_size: int = BLOCK, vocab_size: int = 11,
               seed: int = 0) -> GPT:
    model = tiny_gpt(seed, attention=attention, block_size=block_size, vocab_size=vocab_size)
    with torch.no_grad():  # large weights: peaked logits, so greedy never hinges on rounding
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model.eval()


def greedy(model: GPT, idx: torch.Tensor, n: int, **kw) -> torch.Tensor:
    return torch.stack(list(generate_tokens(model, idx, n, temperature=0.0, **kw)), dim=1)


# ---- KV cache: exact to the uncached path ----

@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("prompt_len", [1, 2, 7, BLOCK - 1, BLOCK, BLOCK + 1, BLOCK + 5])
def test_cached_greedy_equals_uncached_past_block_size(attention, prompt_len):
    model = peaked_gpt(attention)
    idx = torch.randint(0, 11, (2, prompt_len), generator=torch.Generator().manual_seed(1))
    for shift in (1, 3, None, BLOCK):
        cached = greedy(model, idx, 3 * BLOCK, context_shift=shift)
        uncached = greedy(model, idx, 3 * BLOCK, context_shift=shift, use_cache=False)
        assert torch.equal(cached, uncached), f"context_shift={shift}"


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("shift", [1, 5, BLOCK])
def test_cached_logits_equal_uncached_logits_at_every_step(attention, shift):
    model = peaked_gpt(attention)
    cached, uncached = _CachedDecoder(model, shift, batch_size=3), _UncachedDecoder(model, shift)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (3, 4), generator=gen)
    with torch.no_grad():
        for step in range(3 * BLOCK):
            want = uncached(tokens)
            torch.testing.assert_close(cached(tokens), want, atol=1e-5, rtol=1e-5,
                                       msg=lambda m: f"step {step}: {m}")
            nxt = sample_next(want, temperature=1.0, generator=gen)
            tokens = torch.cat([tokens, nxt.view(-1, 1)], dim=1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_context_shift_1_is_nanogpts_sliding_window(use_cache):
    model = peaked_gpt()
    idx = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    want = idx
    with torch.no_grad():
        for _ in range(2 * BLOCK):  # nanoGPT's loop: crop to the last block_size, take argmax
            logits, _ = model(want[:, -BLOCK:])
            want = torch.cat([want, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    got = greedy(model, idx, 2 * BLOCK, context_shift=1, use_cache=use_cache, dtype="float32")
    assert torch.equal(got, want[:, idx.size(1):])


@pytest.mark.parametrize("use_cache", [True, False])
def test_long_prompt_keeps_its_last_block_size_tokens(use_cache):
    model = peaked_gpt()
    idx = torch.randint(0, 11, (1, BLOCK + 9), generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy(model, idx, 2 * BLOCK, use_cache=use_cache),
                       greedy(model, idx[:, -BLOCK:], 2 * BLOCK, use_cache=use_cache))


def test_kv_cache_is_preallocated_outside_the_parameters():
    model = peaked_gpt()
    keys, n_params = set(model.state_dict()), sum(p.numel() for p in model.parameters())
    caches = model.make_kv_caches(batch_size=3)
    cfg = model.config
    head_size = cfg.n_embd // cfg.n_head
    assert len(caches) == cfg.n_layer
    assert sum(b.nbytes for c in caches for b in (c.k, c.v)) == \
        2 * cfg.n_layer * 3 * cfg.n_head * cfg.block_size * head_size * 4
    assert set(model.state_dict()) == keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert all(not b.requires_grad for c in caches for b in (c.k, c.v))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # keys are bf16 there: so is the cache
        assert model.make_kv_caches(1)[0].k.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="overflow"):
        caches[0].update(*[torch.zeros(3, cfg.n_head, cfg.block_size + 1, head_size)] * 2)


def test_generation_decodes_without_dropout_and_leaves_the_model_alone():
    model = peaked_gpt()
    for block in model.transformer.h:  # heavy dropout: masks would change greedy tokens
        block.attn.attn_dropout.p = block.attn.resid_dropout.p = block.mlp.dropout.p = 0.5
        block.attn.dropout = 0.5
    model.train()
    idx = torch.randint(0, 11, (2, BLOCK))
    with torch.no_grad():
        torch.manual_seed(0)
        before, _ = model(idx, idx)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(model.generate(idx[:, :3], 2 * BLOCK, temperature=0.0, dtype="float32"))
        assert model.training
    pieces = stream(model, CharTokenizer(list("abcdefghijk")), "ab", max_new_tokens=50)
    next(pieces)
    pieces.close()  # stopping early restores the mode at once
    assert model.training
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], model.eval().generate(idx[:, :3], 2 * BLOCK, temperature=0.0,
                                                      dtype="float32"))
    with torch.no_grad():
        torch.manual_seed(0)
        after, _ = model.train()(idx, idx)
    assert torch.equal(before, after)


# ---- filtering and sampling of one step ----

def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, -1.0, 4.0, 6.0]])
    assert torch.equal(filter_logits(logits, top_k=2),
                       torch.tensor([[NEG_INF, 3.0, 2.0, NEG_INF], [5.0, NEG_INF, NEG_INF, 6.0]]))


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    # probabilities 0.5, 0.25, 0.15, 0.1, in a different order in each row
    probs = torch.tensor([[0.25, 0.5, 0.1, 0.15], [0.1, 0.15, 0.25, 0.5]])
    logits = probs.log()

    def kept(top_p):
        return torch.isfinite(filter_logits(logits, top_p=top_p)).tolist()

    assert kept(0.4) == [[False, True, False, False], [False, False, False, True]]
    assert kept(0.6) == [[True, True, False, False], [False, False, True, True]]
    assert kept(0.8) == [[True, True, False, True], [False, True, True, True]]
    assert kept(0.95) == [[True] * 4] * 2
    kept_values = filter_logits(logits, top_p=0.6)
    assert torch.equal(kept_values[torch.isfinite(kept_values)], logits[logits > -1.4])


def test_top_k_and_top_p_combine():
    logits = torch.tensor([[0.25, 0.5, 0.1, 0.15]]).log()
    out = filter_logits(logits, top_k=3, top_p=0.8)  # top_p on the renormalised top 3
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


def test_disabled_filters_change_nothing():
    logits = torch.randn(4, 11, generator=torch.Generator().manual_seed(0))
    for kw in ({}, {"top_p": 1.0}, {"top_k": None}, {"top_k": 11}, {"top_k": 50, "top_p": 1.0}):
        assert torch.equal(filter_logits(logits, **kw), logits), kw
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sample_next(logits, 0.7, generator=gen_a),
                       sample_next(logits, 0.7, top_k=None, top_p=1.0, generator=gen_b))


def test_temperature_zero_and_top_k_one_are_argmax():
    logits = torch.randn(8, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=1.0, top_k=1), logits.argmax(-1))


def test_samples_only_come_from_the_kept_tokens():
    logits = torch.tensor([[0.25, 0.5, 0.1, 0.15]]).log().expand(2000, 4)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_p=0.6, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_k=3, generator=gen).tolist()) == {0, 1, 3}
    assert set(sample_next(logits, 1.0, generator=gen).tolist()) == {0, 1, 2, 3}


def test_draw_follows_the_softmax_and_never_picks_a_filtered_token():
    logits = torch.tensor([[NEG_INF, 1.0, 0.2, NEG_INF, -0.5, 2.0, 0.0, NEG_INF]])
    want = torch.softmax(logits, -1)[0]
    n = 40000
    draws = draw(logits.expand(n, 8), torch.Generator().manual_seed(0))
    assert draws.shape == (n,) and draws.dtype == torch.long
    freq = torch.bincount(draws, minlength=8).float() / n
    assert torch.equal(freq > 0, want > 0)
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)  # 4 sigma at n = 40000
    again = draw(logits.expand(n, 8), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # the same generator state, the same tokens


@pytest.mark.parametrize("uniform, want", [(0.0, 6), (1.0 - 2.0 ** -53, 1)])
def test_draw_at_the_ends_of_the_uniform_range_picks_a_kept_token(monkeypatch, uniform, want):
    logits = torch.tensor([[NEG_INF, 1.0, 0.2, NEG_INF, -0.5, 2.0, 0.0, NEG_INF]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, uniform, **{
        k: v for k, v in kw.items() if k in ("dtype", "device")}))
    assert draw(logits).tolist() == [want]  # the last and the first token of weight > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_a_one_line_error(bad):
    logits = torch.tensor([[0.0, bad, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(SamplingError, match="not finite") as e:
        sample_next(logits, 0.8)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


@pytest.mark.parametrize("top_p", [None, 0.7])
def test_top_k_draws_follow_the_filtered_distribution(top_p):
    logits = torch.tensor([[2.0, 0.5, 1.5, -1.0, 1.0, 0.0, 3.0, -2.0]])
    want = torch.softmax(filter_logits(logits / 0.8, top_k=4, top_p=top_p), -1)[0]
    n = 40000
    draws = sample_next(logits.expand(n, 8), 0.8, top_k=4, top_p=top_p,
                        generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=8).float() / n
    assert torch.equal(freq > 0, want > 0)  # exactly the kept tokens
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)  # 4 sigma at n = 40000


def test_top_k_keeps_ties_with_the_kth_largest_when_sampling():
    logits = torch.tensor([[1.0, 3.0, 1.0, 0.0, 1.0]]).expand(3000, 5)  # three tie for 2nd
    draws = sample_next(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1, 2, 4}


@pytest.mark.parametrize("kw, message", [
    ({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"context_shift": 0}, "context_shift"),
    ({"context_shift": BLOCK + 1}, "context_shift"), ({"num_samples": 0}, "num_samples"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"seed": 1, "generator": torch.Generator()}, "seed or generator"),
])
def test_bad_options_are_one_line_user_errors(kw, message):
    tok = CharTokenizer(list("abcdefghijk"))
    with pytest.raises(SamplingError, match=message) as e:
        generate_text(peaked_gpt(), tok.encode, tok.decode, "ab", **kw)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_stream_checks_options_when_called_not_at_the_first_next():
    with pytest.raises(SamplingError, match="top_p"):
        stream(peaked_gpt(), CharTokenizer(list("abcdefghijk")), "ab", top_p=0.0)


# ---- text level: seeds, stop strings, batches, streaming ----

@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer(list("\n abcdefgh"))


def texts(tok, prompt="ab", **kw) -> list[str]:
    kw = {"num_samples": 3, "max_new_tokens": 40, "temperature": 1.0, **kw}
    return generate_text(peaked_gpt(vocab_size=tok.vocab_size), tok.encode, tok.decode, prompt,
                         **kw)


def test_same_seed_same_samples_different_seed_different_samples(tok):
    first = texts(tok, seed=7)
    assert texts(tok, seed=7) == first
    assert texts(tok, generator=torch.Generator().manual_seed(7)) == first
    assert texts(tok, seed=7, use_cache=False) == first
    assert texts(tok, seed=8) != first
    assert len(set(first)) == 3  # the rows of one batch are different samples


def test_seed_leaves_the_global_rng_alone(tok):
    model = peaked_gpt(vocab_size=tok.vocab_size)
    state = torch.get_rng_state()
    generate_text(model, tok.encode, tok.decode, "ab", max_new_tokens=20, seed=7)
    assert torch.equal(torch.get_rng_state(), state)


def test_stop_string_ends_the_sample(tok):
    full = texts(tok, seed=3, num_samples=1, max_new_tokens=60)[0]
    stop = full[20:22]
    cut = texts(tok, seed=3, num_samples=1, max_new_tokens=60, stop=[stop])[0]
    assert cut == full[:full.index(stop)]
    assert texts(tok, seed=3, num_samples=1, max_new_tokens=60, stop=["zz", stop])[0] == cut


def test_generation_ends_when_every_sample_has_stopped(tok, monkeypatch):
    model = peaked_gpt(vocab_size=tok.vocab_size)
    calls = []
    pieces = stream(model, tok, "ab", max_new_tokens=1000, stop=list(tok.chars), seed=0)
    original = _CachedDecoder.__call__  # one call per generated token
    monkeypatch.setattr(_CachedDecoder, "__call__",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    assert list(pieces) == []
    assert len(calls) == 1


def test_text_stream_holds_back_a_possible_stop_string():
    ts = TextStream(lambda ids: "".join(map(chr, ids)), stop=["ab"])
    assert [ts.push(ord(c)) for c in "xaac"] == ["x", "", "a", "ac"]
    assert ts.push(ord("a")) == "" and not ts.done
    assert ts.push(ord("b")) == "" and ts.done and ts.text == "xaac"
    assert ts.push(ord("c")) == "" and ts.flush() == ""


def test_text_stream_holds_back_a_partial_utf8_character():
    ts = TextStream(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert [ts.push(b) for b in "aé€".encode()] == ["a", "", "é", "", "", "€"]


def utf8(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


WORDS = ["▁the", "▁cat", "s", "▁.", "é", "▁", "ab"]


def metaspace(ids: list[int]) -> str:
    """A decoder whose text is not the sum of its pieces (as sentencepiece's): '▁' is a
    space, a leading one is dropped, and a space before '.' is cleaned up."""
    return "".join(WORDS[i] for i in ids).replace("▁", " ").lstrip(" ").replace(" .", ".")


@pytest.mark.parametrize("decode, stop", [(utf8, []), (utf8, ["€€", "zq"]),
                                          (metaspace, []), (metaspace, ["cat."])])
def test_a_long_text_stream_shows_exactly_the_decoded_text(decode, stop):
    gen = torch.Generator().manual_seed(0)
    if decode is utf8:  # bytes of a text with 1-, 2- and 3-byte characters, and a few stray bytes
        text = "".join("aé€zq"[i] for i in torch.randint(0, 5, (1500,), generator=gen))
        ids = list(text.encode()) + [0xE2, 0x82] + list("tail".encode())
    else:
        ids = torch.randint(0, len(WORDS), (1500,), generator=gen).tolist()
    ts = TextStream(decode, stop)
    calls = []
    ts.decode = lambda part: calls.append(len(part)) or decode(part)
    shown = "".join(ts.push(i) for i in ids) + ts.flush()
    want = decode(ids)
    for s in stop:
        want = want[:want.find(s)] if s in want else want
    assert shown == want and (ts.done or not stop)
    if not stop:  # each push decoded a bounded tail (all of them each time: 3.8M ids here)
        assert sum(calls) < (5 * TextStream.SETTLE + 2) * len(ids)
        assert ts.settling and ts.settled > len(ids) - 3 * TextStream.SETTLE


def test_stream_yields_the_same_text_as_generate_text(tok):
    model = peaked_gpt(vocab_size=tok.vocab_size)
    pieces = list(stream(model, tok, "ab", max_new_tokens=30, seed=4, stop=["\n\n"]))
    assert len(pieces) > 1
    assert "".join(pieces) == generate_text(model, tok.encode, tok.decode, "ab",
                                            max_new_tokens=30, seed=4, stop=["\n\n"])[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_rows_equal_their_prompts_generated_alone(use_cache, dtype):
    # in one dtype: 'auto' may pick another for one row than for a batch (AVX2: bf16 for one)
    model = peaked_gpt()
    prompts = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(5))
    batch = greedy(model, prompts, 2 * BLOCK, use_cache=use_cache, dtype=dtype)
    for i in range(4):
        assert torch.equal(batch[i:i + 1], greedy(model, prompts[i:i + 1], 2 * BLOCK,
                                                  dtype=dtype))


# ---- sample.py ----

def save_model(out, model: GPT, tok: CharTokenizer):
    """A checkpoint of model, in the format load_model reads."""
    save_checkpoint(checkpoint_path(out), {
        "model": model.state_dict(), "tokenizer": tok.to_dict(),
        "model_args": {k: getattr(model.config, k) for k in GPTConfig.__dataclass_fields__}})
    return out


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, tok):
    """A tiny random model with peaked logits."""
    return save_model(tmp_path_factory.mktemp("ckpt"), peaked_gpt(vocab_size=tok.vocab_size), tok)


@pytest.fixture(scope="module")
def uniform_out_dir(tmp_path_factory, tok):
    """A model whose logits are all exactly 0 (zero token embeddings, tied to the head): every
    token is equally likely in any dtype, so what is sampled depends on the seed alone."""
    model = peaked_gpt(vocab_size=tok.vocab_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return save_model(tmp_path_factory.mktemp("uniform"), model, tok)


def cli(capsys, out_dir, *args) -> tuple[int, str, str]:
    code = sample_main(["--out_dir", str(out_dir), "--device", "cpu", "--max_new_tokens", "40",
                        *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def samples_of(out: str, prompt: str) -> list[str]:
    blocks = out.split(SEPARATOR)
    assert blocks[-1] == ""
    assert all(b.startswith(prompt) for b in blocks[:-1])
    return [b[len(prompt):] for b in blocks[:-1]]


def test_cli_prints_num_samples_separated_samples(capsys, out_dir):
    code, out, _ = cli(capsys, out_dir, "--num_samples", "4", "--start", "ab")
    assert code == 0 and out.count(SEPARATOR) == 4
    samples = samples_of(out, "ab")
    assert len(samples) == 4 and all(len(s) == 40 for s in samples)


def test_cli_seed_makes_samples_repeatable(capsys, out_dir):
    runs = [cli(capsys, out_dir, "--num_samples", "2", "--seed", s)[1] for s in ("1", "1", "2")]
    assert runs[0] == runs[1] != runs[2]
    assert cli(capsys, out_dir, "--num_samples", "2", "--seed", "1", "--no_cache")[1] == runs[0]


def test_cli_stop_string_ends_each_sample(capsys, uniform_out_dir):
    # 3 x 40 uniform draws from 10 characters: no newline among them has probability 3e-6
    _, out, _ = cli(capsys, uniform_out_dir, "--num_samples", "3", "--start", "ab")
    full = samples_of(out, "ab")
    assert any("\n" in s for s in full)
    _, out, _ = cli(capsys, uniform_out_dir, "--num_samples", "3", "--start", "ab",
                    "--stop", "\\n")
    assert samples_of(out, "ab") == [s.split("\n")[0] for s in full]


@pytest.mark.parametrize("bf16_units, kernels", [(True, "AVX512"), (False, "AVX2"),
                                                  (False, "AVX512"), (False, "DEFAULT")])
def test_cli_decodes_in_bf16_where_the_cpu_decodes_faster_in_it_unless_dtype_is_given(
        capsys, out_dir, monkeypatch, bf16_units, kernels):
    import nanogpt.device
    import nanogpt.inference

    monkeypatch.setattr(nanogpt.device, "cpu_has_fast_bf16", lambda: bf16_units)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    faster = bf16_units or kernels == "AVX2"
    prepared, real = [], nanogpt.inference.for_decoding
    monkeypatch.setattr(nanogpt.inference, "for_decoding", lambda model, dtype="auto", **kw: (
        prepared.append(real(model, dtype, **kw)) or prepared[-1]))
    batched = "bfloat16" if bf16_units else "float32"  # bf16 for a batch only with bf16 units
    for args, want in (([], "bfloat16" if faster else "float32"), (["--dtype", "float32"],
                       "float32"), (["--dtype", "bfloat16"], "bfloat16"),
                       (["--num_samples", "3"], batched)):
        prepared.clear()
        assert cli(capsys, out_dir, "--seed", "3", "--num_samples", "1", *args)[0] == 0
        assert {m.prepared_for_decoding for m in prepared} == {want}, args
        assert {p.dtype for p in prepared[0].parameters()} == {getattr(torch, want)}


@pytest.mark.parametrize("args, message", [
    (["--top_p", "0"], "top_p"), (["--num_samples", "0"], "num_samples"),
    (["--temperature", "-1"], "temperature"), (["--top_k", "-1"], "top_k"),
    (["--start", "xyz"], "not in the vocabulary"), (["--start", ""], "prompt is empty"),
    (["--context_shift", "0"], "context_shift"), (["--stop", "\\"], "escape"),
])
def test_cli_user_errors_are_one_line(capsys, out_dir, args, message):
    code, out, err = cli(capsys, out_dir, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error:") and message in err


def test_sample_script_streams_and_exits_zero(out_dir):
    result = run_script("sample.py", ["--out_dir", str(out_dir), "--device", "cpu",
                                      "--num_samples", "2", "--max_new_tokens", "20",
                                      "--start", "a", "--stop", "\\n\\n"], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(SEPARATOR) == 2
    assert all("\n\n" not in s for s in samples_of(result.stdout, "a"))


@pytest.mark.slow
def test_sample_from_a_trained_checkpoint(data_dir, tmp_path):
    out = tmp_path / "out"
    trained = run_script("train.py", tiny_args(data_dir, out, max_iters=5, lr_decay_iters=5,
                                               eval_interval=5), env=ONE_THREAD)
    assert trained.returncode == 0, trained.stderr
    args = ["--out_dir", str(out), "--device", "cpu", "--num_samples", "3", "--seed", "3",
            "--max_new_tokens", "80", "--start", "ROMEO:", "--stop", "\\n\\n"]
    first, second = [run_script("sample.py", args, env=ONE_THREAD) for _ in range(2)]
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.count(SEPARATOR) == 3
    assert all("\n\n" not in s for s in samples_of(first.stdout, "ROMEO:"))
