"""Your own tokenizer: a byte-level BPE trained on your text, exact round trips, streaming
preparation, bits per byte, and tokenizer files that transformers loads."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from nanogpt import prepare, textfiles
from nanogpt.checkpoint import save_checkpoint
from nanogpt.data import BatchSampler, TokenWriter
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.prepare import prepare_text
from nanogpt.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    token_byte_lengths,
    tokenizer_from_dict,
)
from tests.conftest import read_log, run_script, tiny_args, tiny_gpt

TRICKY = ("naïve café ✓ 日本語のテキスト 😀👍🏽 e\u0301 a\u0308\u0323 \x00\x07\x1b[0m\r\n\ttabs "
          "  and  spaces\n\n\n  \n<|endoftext|> ÿ\u200d\U0001f469\u200d\U0001f4bb 42,000.5\n")


@pytest.fixture(scope="module")
def bpe(shakespeare_text) -> BPETokenizer:
    pytest.importorskip("tokenizers")
    pytest.importorskip("tiktoken")
    from nanogpt.bpe import train_bpe

    return train_bpe([shakespeare_text[:200_000], TRICKY], 1024)


# ---- the trained BPE ----

def test_bpe_round_trips_any_utf8_and_learns_the_text(bpe, shakespeare_text):
    assert (bpe.vocab_size, bpe.eot_token) == (1024, 1023)
    for text in (TRICKY, shakespeare_text[-20_000:], TRICKY * 3):
        assert bpe.decode(bpe.encode_ordinary(text)) == text
    tail = shakespeare_text[-20_000:]
    assert len(bpe.encode_ordinary(tail)) < len(tail.encode("utf-8")) / 2
    # a written-out <|endoftext|> is the token in a prompt, text in a file
    assert bpe.encode("a<|endoftext|>b").count(1023) == 1
    assert 1023 not in bpe.encode_ordinary("a<|endoftext|>b")


def test_bpe_survives_json_and_is_checked(bpe):
    again = tokenizer_from_dict(json.loads(json.dumps(bpe.to_dict())))
    assert again.encode(TRICKY) == bpe.encode(TRICKY)
    with pytest.raises(ValueError, match="merge 0 joins ids 0 and 300"):
        BPETokenizer([(0, 300)])
    with pytest.raises(ValueError, match="same token"):
        BPETokenizer([(97, 98), (97, 98)])


def test_learned_merges_become_ids_in_order():
    from nanogpt.bpe import merges_to_ids

    learned = [["a", "b"], "b c", ["ab", "c"], ["a", "bc"], ["Ġ", "abc"]]  # a+bc remakes abc
    assert merges_to_ids(learned) == [(97, 98), (98, 99), (256, 99), (32, 258)]


def test_too_small_a_vocabulary_is_refused():
    pytest.importorskip("tokenizers")
    from nanogpt.bpe import train_bpe

    with pytest.raises(UserError, match="at least 258"):
        train_bpe(["some text"], 257)


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_token_byte_lengths_add_up_to_the_utf8_length(kind, bpe):
    text = TRICKY.replace("<|endoftext|>", "")
    tok = {"char": lambda: CharTokenizer.from_text(text), "gpt2": GPT2Tokenizer,
           "bpe": lambda: bpe}[kind]()
    lengths = token_byte_lengths(tok.to_dict())
    assert len(lengths) == tok.vocab_size
    ids = tok.encode(text + "<|endoftext|>") if kind != "char" else tok.encode(text)
    assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))  # special tokens: 0
    if kind == "gpt2":  # read from encoder.json alone, as tiktoken has them
        enc = tok._enc
        assert lengths[:50256] == [len(enc.decode_single_token_bytes(i)) for i in range(50256)]


# ---- reading and preparing in pieces ----

def test_pieces_join_to_the_exact_text_and_cut_at_line_starts(tmp_path, monkeypatch,
                                                              shakespeare_text):
    monkeypatch.setattr(textfiles, "PIECE_BYTES", 1000)
    text = shakespeare_text[:30_000].replace("\n", "\r\n", 500) + TRICKY
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    pieces = [p for p, _ in textfiles.read_pieces(path)]
    assert "".join(pieces) == text and len(pieces) > 20
    for a, b in zip(pieces, pieces[1:]):
        line_end = a[-1] + b[0] == "\r\n" or (a[-1] == "\n" and not b[0].isspace())
        assert line_end and not a[-2].isspace(), (a[-2:], b[:2])
    # no newline at all: cut anyway, memory stays bounded
    path.write_text("é" * 5000, encoding="utf-8")
    pieces = [p for p, _ in textfiles.read_pieces(path)]
    assert "".join(pieces) == "é" * 5000 and max(map(len, pieces)) < 2000


def test_invalid_utf8_is_named_with_its_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(textfiles, "PIECE_BYTES", 1000)
    path = tmp_path / "bad.txt"
    path.write_bytes("é".encode("utf-8") * 2600 + b"\xff tail")
    with pytest.raises(UserError, match=r"byte 0xff at offset 5200\)"):
        list(textfiles.read_pieces(path))


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_preparing_in_pieces_gives_the_tokens_of_the_whole_text(tmp_path, monkeypatch,
                                                                 shakespeare_text, kind):
    text = shakespeare_text[:40_000].replace("\n", "\r\n", 600) + TRICKY
    (tmp_path / "in.txt").write_text(text, encoding="utf-8", newline="")
    vocab = 300 if kind == "bpe" else None
    whole = prepare_text(tmp_path / "in.txt", tmp_path / "whole", kind, vocab_size=vocab)
    monkeypatch.setattr(textfiles, "PIECE_BYTES", 997)
    pieces = prepare_text(tmp_path / "in.txt", tmp_path / "pieces", kind, vocab_size=vocab)
    assert pieces == whole
    tok = tokenizer_from_dict(whole["tokenizer"])
    split = int(len(text) * 0.9)
    for name, part in (("train", text[:split]), ("val", text[split:])):
        ids = np.fromfile(tmp_path / "pieces" / f"{name}.bin", dtype=whole["dtype"])
        expected = tok.encode(part) if kind == "char" else tok.encode_ordinary(part)
        assert ids.tolist() == expected
        assert tok.decode(ids.tolist()) == part


def test_bpe_folder_separates_documents_and_trains_on_the_train_part(tmp_path):
    pytest.importorskip("tokenizers")
    src = tmp_path / "notes"
    src.mkdir()
    docs = ["first note\r\nwith a literal <|endoftext|> inside\n" * 30,
            "second ✓ 😀 note\n" * 30, "zyzzyva " * 10]
    for i, doc in enumerate(docs):
        (src / f"{i}.txt").write_text(doc, encoding="utf-8", newline="")
    result = run_script("data/prepare.py", ["--input", str(src), "--tokenizer", "bpe",
                                            "--vocab_size", "400", "--out", str(tmp_path / "ds")])
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text(encoding="utf-8"))
    tok = tokenizer_from_dict(meta["tokenizer"])
    assert meta["tokenizer"]["kind"] == "bpe" and meta["vocab_size"] == tok.vocab_size <= 400
    mark = "\U000f0000"  # where a document ends: the separator counts as one character
    joined = mark.join(docs)
    split = int(len(joined) * 0.9)
    for name, part in (("train", joined[:split]), ("val", joined[split:])):
        ids = np.fromfile(tmp_path / "ds" / f"{name}.bin", dtype=meta["dtype"]).tolist()
        text = b"".join(mark.encode() if i == tok.eot_token else tok.token_bytes[i]
                        for i in ids).decode("utf-8")
        assert text == part
    # zyzzyva appears only in the last 10% (the last file): the BPE never saw it
    assert not any(b"zyzz" in t for t in tok.token_bytes)


def test_bpe_learns_from_an_even_sample_of_the_training_part(tmp_path, monkeypatch,
                                                             shakespeare_text):
    monkeypatch.setattr(textfiles, "PIECE_BYTES", 1000)
    path = tmp_path / "in.txt"
    path.write_text(shakespeare_text[:30_000], encoding="utf-8")
    split_at = 27_000
    pieces = prepare._split(prepare._pieces([path], "test"), split_at)
    train = [p for s, p in pieces if s == "train"]
    assert len(train) > 20
    for max_chars, every in ((10**9, 1), (split_at // 3, 3)):
        sample = list(prepare._bpe_sample([path], split_at, max_chars))
        assert "".join(sample) == "".join(train[::every])


def test_prepare_options_are_checked(tmp_path):
    (tmp_path / "in.txt").write_text("hello world\n" * 10, encoding="utf-8")
    with pytest.raises(UserError, match="vocab_size is for --tokenizer bpe"):
        prepare_text(tmp_path / "in.txt", tmp_path / "ds", "char", vocab_size=500)
    result = run_script("data/prepare.py", ["--input", str(tmp_path / "in.txt"), "--tokenizer",
                                            "bpe", "--vocab_size", "10", "--out",
                                            str(tmp_path / "ds")])
    assert result.returncode != 0 and result.stderr.startswith("error: ")
    assert "at least 258" in result.stderr and not (tmp_path / "ds" / "meta.json").exists()


def test_token_writer_maps_one_window_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(TokenWriter, "WINDOW_TOKENS", 7)
    chunks = [np.arange(n, dtype=np.uint32) + 70000 for n in (3, 0, 20, 7, 1, 5)]
    with TokenWriter(tmp_path / "t.bin", np.uint32) as writer:
        for c in chunks:
            writer.write(c)
        assert writer.commit() == 36
    assert np.array_equal(np.fromfile(tmp_path / "t.bin", dtype=np.uint32),
                          np.concatenate(chunks))
    with pytest.raises(RuntimeError), TokenWriter(tmp_path / "u.bin", np.uint16) as writer:
        writer.write([1, 2, 3])
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]  # no partial file


# ---- bits per byte ----

def test_estimate_loss_reports_bits_per_byte_of_the_targets(tmp_path):
    from nanogpt.trainer import estimate_loss

    torch.manual_seed(0)
    tokens = torch.randint(0, 37, (3000,)).numpy().astype(np.uint16)
    tokens.tofile(tmp_path / "val.bin")
    sampler = BatchSampler(str(tmp_path / "val.bin"), 16, 5, seed=3)
    model = tiny_gpt().eval()
    lengths = torch.randint(1, 5, (37,))
    lengths[36] = 0  # a special token
    nats = n_bytes = 0.0
    for k in range(4):
        x, y = sampler.get_batch(k)
        nats += model(x, y)[1].item() * y.numel()
        n_bytes += lengths[y].sum().item()
    for chunks in (1, 3):
        out = estimate_loss(model, {"val": sampler}, 4, chunks=chunks, token_bytes=lengths)
        assert out["val_bpb"] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)
    assert set(estimate_loss(model, {"val": sampler}, 2)) == {"val"}  # no table, no bpb


def test_every_eval_logs_bits_per_byte(data_dir, tmp_path):
    from nanogpt.config import parse_args
    from nanogpt.trainer import train

    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=4, eval_interval=2)))
    evals = read_log(out, "eval")
    assert len(evals) == 3
    for r in evals:  # Shakespeare is ASCII: one byte per character, bpb = loss / ln 2
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-6)
        assert r["train_bpb"] == pytest.approx(r["train_loss"] / math.log(2), rel=1e-6)


def test_plot_draws_bits_per_byte(tmp_path):
    pytest.importorskip("matplotlib")
    from nanogpt import plot

    logs = []
    for name, record in (("char", {"val_bpb": 2.4, "train_bpb": 2.3}),
                         ("old", {})):
        log = tmp_path / name / "log.jsonl"
        log.parent.mkdir()
        log.write_text(json.dumps({"event": "eval", "iter": 0, "train_loss": 1.6,
                                   "val_loss": 1.7, "elapsed": 1.0, **record}) + "\n")
        logs.append(str(log))
    assert plot.main([logs[0], "-o", str(tmp_path / "bpb.png"), "--metric", "bpb"]) == 0
    assert (tmp_path / "bpb.png").read_bytes()[:4] == b"\x89PNG"
    assert plot.main([logs[1], "-o", str(tmp_path / "x.png"), "--metric", "bpb"]) == 2
    assert not (tmp_path / "x.png").exists()


def test_plot_argument_mistakes_are_one_line(tmp_path, capsys):
    from nanogpt import plot

    assert plot.main([str(tmp_path / "log.jsonl"), "--metrc", "bpb"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unrecognized arguments: --metrc bpb (see python -m nanogpt.plot --help)\n"


# ---- exported tokenizers in transformers ----

def _export_random_model(tmp_path, tokenizer_meta: dict, vocab_size: int):
    torch.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32,
                       bias=True)
    model = GPT(config)
    with torch.no_grad():  # decisive logits: greedy picks do not hinge on float rounding
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    out = tmp_path / "out"
    out.mkdir()
    save_checkpoint(out / "ckpt.pt", {"model": model.state_dict(), "tokenizer": tokenizer_meta,
                                      "model_args": dataclasses.asdict(config)})
    result = run_script("export.py", ["--out_dir", str(out), "--to", str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr
    return out, tmp_path / "hf"


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_exported_directory_tokenizes_and_generates_as_nanogpt(tmp_path, capsys, bpe, kind,
                                                               shakespeare_text):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from nanogpt.cli import sample_main

    text = TRICKY.replace("<|endoftext|>", "") + shakespeare_text[:20_000]
    tok = {"char": lambda: CharTokenizer.from_text(text), "gpt2": GPT2Tokenizer,
           "bpe": lambda: bpe}[kind]()
    out, hf_dir = _export_random_model(tmp_path, tok.to_dict(), tok.vocab_size)
    if kind == "gpt2":  # GPT-2's own files, byte for byte
        from nanogpt.download import ASSETS

        assert (hf_dir / "vocab.json").read_bytes() == (ASSETS / "gpt2/encoder.json").read_bytes()
        assert (hf_dir / "merges.txt").read_bytes() == (ASSETS / "gpt2/vocab.bpe").read_bytes()

    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text)
    assert hf_tok.decode(ids) == text

    prompt = "ROMEO: naïve 😀\n" if kind != "char" else "ROMEO: naïve\n"
    assert sample_main(["--out_dir", str(out), "--start", prompt, "--temperature", "0",
                        "--num_samples", "1", "--max_new_tokens", "24", "--device", "cpu",
                        "--dtype", "float32"]) == 0
    ours = capsys.readouterr().out.split("\n---------------\n")[0]
    generator = transformers.pipeline("text-generation", model=str(hf_dir), device="cpu")
    theirs = generator(prompt, max_new_tokens=24, do_sample=False)[0]["generated_text"]
    assert theirs == ours and len(ours) > len(prompt)


# ---- as a user would ----

@pytest.mark.slow
def test_own_bpe_prepare_train_sample_resume_export(tmp_path, shakespeare_text):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    (tmp_path / "notes.txt").write_text(shakespeare_text[:60_000], encoding="utf-8")
    data_dir = tmp_path / "data"
    result = run_script("data/prepare.py", ["--input", str(tmp_path / "notes.txt"),
                                            "--tokenizer", "bpe", "--vocab_size", "512",
                                            "--out", str(data_dir / "notes")])
    assert result.returncode == 0, result.stderr
    assert "bpe tokenizer, vocab size 512" in result.stdout
    out = tmp_path / "out"
    args = tiny_args(data_dir, out, dataset="notes", max_iters=10, eval_interval=5)
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stderr
    assert "val bpb" in result.stdout
    result = run_script("train.py", args + ["--init_from=resume", "--max_iters=12"])
    assert result.returncode == 0, result.stderr
    evals = read_log(out, "eval")
    assert [r["iter"] for r in evals] == [0, 5, 10, 10, 12]
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"]

    for f in (data_dir / "notes").iterdir():  # the checkpoint alone is enough from here on
        f.unlink()
    result = run_script("sample.py", ["--out_dir", str(out), "--start=ROMEO:", "--num_samples=1",
                                      "--max_new_tokens=20", "--device=cpu"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > 30
    result = run_script("export.py", ["--out_dir", str(out), "--to", str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.decode(hf_tok("ROMEO: what, ho!")["input_ids"]) == "ROMEO: what, ho!"
