import errno
import io
import json
import os
import urllib.error

import numpy as np
import pytest
import torch

from nanogpt import data, download
from nanogpt.data import BatchSampler, CharTokenizer, UnknownCharactersError
from nanogpt.download import sha256_of
from nanogpt.errors import UserError


def test_char_tokenizer_round_trip_and_json(tmp_path):
    text = "Hello, World!\nçà"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tok.json")
    json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))  # plain JSON
    again = CharTokenizer.load(tmp_path / "tok.json")
    assert again.encode(text) == tok.encode(text)


def test_unknown_characters_are_listed():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UnknownCharactersError, match="'x', 'z'"):
        tok.encode("abxcz")


def test_prepare_writes_first_90_and_last_10_percent(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000)) + "XYZ"
    (tmp_path / "ds").mkdir()
    tok = CharTokenizer.from_text(text)
    meta = data.write_dataset(tmp_path / "ds", text, tok)
    train = np.fromfile(tmp_path / "ds" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "ds" / "val.bin", dtype=np.uint16)
    split = int(len(text) * 0.9)
    assert tok.decode(train.tolist()) == text[:split]
    assert tok.decode(val.tolist()) == text[split:]
    saved = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert saved == meta and saved["vocab_size"] == tok.vocab_size and saved["dtype"] == "uint16"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on a machine without internet."""
    import socket

    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_shakespeare_prepares_offline_from_the_shipped_copy(tmp_path, no_network):
    meta = data.prepare_shakespeare_char(tmp_path / "shakespeare_char")
    assert meta["vocab_size"] == 65 and meta["train_tokens"] + meta["val_tokens"] == 1115394
    assert sha256_of(download.ASSETS / download.TINY_SHAKESPEARE.name) == \
        download.TINY_SHAKESPEARE.sha256


def test_gpt2_tokenizer_builds_offline_from_the_shipped_files(no_network):
    from nanogpt.tokenizer import GPT2Tokenizer, _gpt2_encoding

    _gpt2_encoding.cache_clear()
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]  # GPT-2's ids
    assert tok.decode(tok.encode("naïve café ✓\n")) == "naïve café ✓\n"


@pytest.mark.parametrize("shipped", ["missing", "altered"])
def test_without_an_intact_shipped_copy_the_download_error_says_where_to_put_it(
        tmp_path, monkeypatch, shipped):
    assets = tmp_path / "assets"
    if shipped == "altered":
        (assets / "tinyshakespeare").mkdir(parents=True)
        (assets / "tinyshakespeare" / "input.txt").write_text("not Shakespeare")
    monkeypatch.setattr(download, "ASSETS", assets)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as e:
        data.prepare_shakespeare_char(tmp_path / "shakespeare_char")
    msg = str(e.value)
    assert download.TINY_SHAKESPEARE.url in msg
    assert str(tmp_path / "shakespeare_char" / "input.txt") in msg and "\n" not in msg
    assert not list((tmp_path / "shakespeare_char").glob("*.part"))


def test_a_download_with_the_wrong_content_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "ASSETS", tmp_path / "no-assets")
    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda *a, **k: io.BytesIO(b"<html>captive portal</html>"))
    dest = tmp_path / "ds" / "input.txt"
    with pytest.raises(UserError, match="not the expected file"):
        download.known_file(download.TINY_SHAKESPEARE, dest)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_a_known_dataset_that_cannot_be_prepared_is_one_line(tmp_path, monkeypatch):
    """train.py prepares shakespeare_char itself: a user's input.txt that is not UTF-8, or a
    disk that refuses the write, is a one-line UserError, not a traceback."""
    ds = tmp_path / "shakespeare_char"
    ds.mkdir()
    (ds / "input.txt").write_bytes("caf\u00e9\n".encode("latin-1") * 3)
    with pytest.raises(UserError, match=r"input.txt is not UTF-8 text \(byte 0xe9 at offset 3"):
        data.ensure_dataset(tmp_path, "shakespeare_char")
    (ds / "input.txt").unlink()

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(data, "atomic_write", full_disk)
    with pytest.raises(UserError, match="cannot prepare .*: No space left on device") as e:
        data.ensure_dataset(tmp_path, "shakespeare_char")
    assert "\n" not in str(e.value)


def test_the_shakespeare_prepare_script_prepares_and_refuses_arguments(tmp_path, capsys):
    from nanogpt.cli import prepare_known_main

    ds = tmp_path / "shakespeare_char"
    assert prepare_known_main(ds, ["--out", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prepare.py takes no arguments") and err.count("\n") == 1
    assert not ds.exists()
    assert prepare_known_main(ds, []) == 0
    assert "vocab size 65, 1,003,854 train tokens" in capsys.readouterr().out
    assert data.load_meta(ds)["vocab_size"] == 65
    assert {p.name for p in ds.iterdir()} >= set(data.DATASET_FILES)


def test_unknown_unprepared_dataset_names_the_command(tmp_path):
    with pytest.raises(UserError, match="data/prepare.py"):
        data.ensure_dataset(tmp_path, "mytext")


@pytest.fixture
def token_file(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) % 500
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    return path, tokens


def test_get_batch_shapes_shift_and_bounds(token_file):
    path, tokens = token_file
    sampler = BatchSampler(str(path), block_size=16, batch_size=32, seed=1)
    for step in range(20):
        x, y = sampler.get_batch(step)
        assert x.shape == y.shape == (32, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:])
        for row_x, row_y in zip(x, y):
            start = int(np.flatnonzero(tokens == row_x[0].item())[0])
            # every window is a real, contiguous slice of the split
            assert torch.equal(row_x, torch.from_numpy(tokens[start:start + 16].astype(np.int64)))
            assert row_y[-1].item() == tokens[start + 16]


def test_get_batch_is_reproducible_and_varies_by_step_and_micro_step(token_file):
    path, _ = token_file
    a = BatchSampler(str(path), 16, 8, seed=3)
    b = BatchSampler(str(path), 16, 8, seed=3)
    assert torch.equal(a.get_batch(5, 1)[0], b.get_batch(5, 1)[0])
    assert not torch.equal(a.get_batch(5, 1)[0], a.get_batch(6, 1)[0])
    assert not torch.equal(a.get_batch(5, 1)[0], a.get_batch(5, 2)[0])
    other_seed = BatchSampler(str(path), 16, 8, 4)
    assert not torch.equal(a.get_batch(5, 1)[0], other_seed.get_batch(5, 1)[0])


def test_every_window_start_can_be_drawn(token_file):
    path, _ = token_file
    sampler = BatchSampler(str(path), block_size=990, batch_size=64, seed=0)
    starts = {int(s) for step in range(20) for s in sampler.offsets(step, 0)}
    assert starts == set(range(10))  # 1000 tokens, windows of 991: starts 0..9


def test_block_size_too_large_for_the_data_is_a_clear_error(token_file):
    path, _ = token_file
    with pytest.raises(UserError, match="block_size 1000 is too large"):
        BatchSampler(str(path), block_size=1000, batch_size=1, seed=0)
