"""GPT-2: Hugging Face weights in and out, BPE datasets, your own text, finetuning.

transformers, safetensors and tiktoken are test extras: without them these tests skip.
GPT-2's BPE files ship in nanogpt/assets, so tiktoken needs no download.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.prepare import prepare_text, read_text_input
from tests.conftest import SHAKESPEARE, read_log, run_script, tiny_args


def save_hf_gpt2(directory: Path, vocab_size: int = 100, n_positions: int = 64, seed: int = 0,
                 scramble: bool = True, **config):
    """A random 2-layer HF GPT2LMHeadModel saved to directory; scramble: every weight random."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions,
                                  vocab_size=vocab_size, **config)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF starts biases at 0 and norms at 1: a transposed one would hide
        for p in model.parameters() if scramble else []:
            p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    return model


def hf_logits(hf_model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx, idx)[0]  # with targets: logits at every position


# ---- loading HF GPT-2 ----

def test_hf_gpt2_loads_with_same_logits_and_greedy_continuation(tmp_path):
    hf = save_hf_gpt2(tmp_path)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert model.config.gelu_approximate == "tanh"  # HF GPT-2's gelu_new
    assert (model.config.n_layer, model.config.block_size, model.config.vocab_size) == (2, 64, 100)
    idx = torch.randint(0, 100, (3, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)

    prompt = idx[:, :8]
    ours = model.generate(prompt, 12, temperature=0.0)
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_loads_pytorch_model_bin_with_gpt2_names_and_mask_buffers(tmp_path):
    hf = save_hf_gpt2(tmp_path)
    # OpenAI's original files: no 'transformer.' prefix, causal-mask buffers saved, no lm_head
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()
             if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)


class NotATensor:
    pass


def test_pytorch_model_bin_holding_objects_is_refused(tmp_path):
    save_hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"evil": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="cannot be loaded safely"):
        GPT.from_pretrained(str(tmp_path))


def test_only_dropout_and_runtime_choices_may_be_overridden(tmp_path):
    save_hf_gpt2(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), dropout=0.1)
    assert model.config.dropout == 0.1 and model.config.bias
    assert GPT.from_pretrained(str(tmp_path)).config.dropout == 0.0
    manual = GPT.from_pretrained(str(tmp_path), attention="manual", fast_dropout=False)
    assert manual.transformer.h[0].attn.path(torch.zeros(1, 12, 4, 64)) == "manual"
    assert not manual.transformer.h[0].mlp.dropout.fast
    with pytest.raises(ValueError, match="n_layer"):
        GPT.from_pretrained(str(tmp_path), n_layer=2)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "model_type"),
    ({"activation_function": "relu"}, "activation_function"),
    ({"n_inner": 64}, "n_inner"),
])
def test_unsupported_hf_configs_fail_clearly(tmp_path, change, message):
    save_hf_gpt2(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(tmp_path))


def test_unknown_names_and_empty_directories_fail_clearly(tmp_path):
    with pytest.raises(UserError, match="neither a directory nor a GPT-2 name"):
        GPT.from_pretrained("gpt3")
    with pytest.raises(UserError, match="no config.json"):
        GPT.from_pretrained(str(tmp_path))


def test_a_gpt2_name_without_safetensors_fails_before_downloading(monkeypatch):
    """The Hub's GPT-2 weights are safetensors: without the library a download (6 GB for
    gpt2-xl) would only end in 'reading model.safetensors needs safetensors'."""
    hub = pytest.importorskip("huggingface_hub")
    downloads = []
    monkeypatch.setattr(hub, "snapshot_download", lambda **kw: downloads.append(kw))
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    with pytest.raises(UserError, match=r"downloading gpt2 needs safetensors.*\[hf\]"):
        GPT.from_pretrained("gpt2")
    assert downloads == []


# ---- exporting ----

@pytest.mark.parametrize("bias, gelu", [(True, "tanh"), (True, "none"), (False, "none")])
def test_export_loads_in_transformers_with_same_logits(tmp_path, bias, gelu):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from nanogpt.pretrained import export_hf

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=70, n_layer=2, n_head=2, n_embd=16,
                          bias=bias, gelu_approximate=gelu)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    export_hf(model, tmp_path / "hf", {"kind": "char", "chars": list("ab")})
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 70, (2, 32))
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(model, idx), atol=1e-5, rtol=0)
    back = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    torch.testing.assert_close(our_logits(back, idx), our_logits(model, idx), atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "hf" / "nanogpt_tokenizer.json").read_text())["kind"] == "char"


def test_export_to_a_place_that_cannot_be_written_is_one_line(tmp_path):
    pytest.importorskip("safetensors")
    from nanogpt.pretrained import export_hf

    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(UserError, match=f"cannot write the export to {tmp_path}/a_file/hf: Not "
                                        f"a directory"):
        export_hf(GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)),
                  tmp_path / "a_file" / "hf")
    assert (tmp_path / "a_file").read_text() == "not a directory"


def test_sample_py_samples_an_exported_run_with_its_own_tokenizer(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from nanogpt.cli import sample_main
    from nanogpt.pretrained import export_hf
    from nanogpt.sampling import generate_text
    from nanogpt.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(set(" :ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=2, n_head=2,
                          n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    export_hf(model, tmp_path / "hf", tok.to_dict())
    assert sample_main(["--init_from", str(tmp_path / "hf"), "--start=ROMEO:", "--device=cpu",
                        "--num_samples=1", "--max_new_tokens=20", "--temperature=0",
                        "--dtype=float32"]) == 0
    expected = generate_text(model, tok.encode, tok.decode, "ROMEO:", max_new_tokens=20,
                             temperature=0, dtype="float32")[0]
    assert capsys.readouterr().out == "ROMEO:" + expected + "\n---------------\n"
    assert len(set(expected)) > 1


# ---- datasets ----

def decode_bin(directory: Path, split: str) -> str:
    from nanogpt.data import tokenizer_from_dict

    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    ids = np.fromfile(directory / f"{split}.bin", dtype=meta["dtype"])
    return tokenizer_from_dict(meta["tokenizer"]).decode(ids.tolist())


def test_gpt2_bpe_dataset_round_trips(tmp_path, shakespeare_text):
    text = shakespeare_text[:5000]
    (tmp_path / "notes.txt").write_text(text, encoding="utf-8")
    meta = prepare_text(tmp_path / "notes.txt", tmp_path / "notes", "gpt2")
    assert meta["tokenizer"] == {"kind": "gpt2"}
    assert (meta["vocab_size"], meta["dtype"]) == (50257, "uint16")
    split = int(len(text) * 0.9)
    assert decode_bin(tmp_path / "notes", "train") == text[:split]
    assert decode_bin(tmp_path / "notes", "val") == text[split:]
    assert meta["train_tokens"] < split / 2  # BPE, not characters


def test_shakespeare_bpe_matches_nanogpt_token_counts(tmp_path):
    from nanogpt.data import prepare_shakespeare

    shutil.copy(SHAKESPEARE, tmp_path / "input.txt")
    meta = prepare_shakespeare(tmp_path)
    assert (meta["train_tokens"], meta["val_tokens"]) == (301966, 36059)  # nanoGPT's README


def test_prepare_folder_of_text_files_round_trips(tmp_path):
    src = tmp_path / "notes"
    (src / "sub").mkdir(parents=True)
    (src / "b.txt").write_text("second file, with ünïcode ✓\n", encoding="utf-8")
    (src / "a.txt").write_text("first file\nline two\n" * 20, encoding="utf-8")
    (src / "sub" / "c.md").write_text("# third\n", encoding="utf-8")
    (src / ".hidden").write_text("skipped", encoding="utf-8")
    result = run_script("data/prepare.py", ["--input", str(src), "--out", str(tmp_path / "ds")])
    assert result.returncode == 0, result.stderr
    text = "\n".join((src / name).read_text(encoding="utf-8")
                     for name in ("a.txt", "b.txt", "sub/c.md"))
    split = int(len(text) * 0.9)
    assert decode_bin(tmp_path / "ds", "train") == text[:split]
    assert decode_bin(tmp_path / "ds", "val") == text[split:]
    assert "skipped" not in read_text_input(src)


def test_large_char_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70000) if not 0xD800 <= c < 0xE000]
    (tmp_path / "wide.txt").write_text("".join(chars), encoding="utf-8")
    meta = prepare_text(tmp_path / "wide.txt", tmp_path / "wide")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == len(chars)
    assert decode_bin(tmp_path / "wide", "val") == "".join(chars)[int(len(chars) * 0.9):]


def test_prepare_errors_name_the_fix(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text.*iconv"):
        prepare_text(tmp_path / "latin1.txt", tmp_path / "ds")
    with pytest.raises(UserError, match="does not exist"):
        prepare_text(tmp_path / "missing.txt", tmp_path / "ds")
    result = run_script("data/prepare.py", ["--input", str(tmp_path / "missing.txt"),
                                            "--out", str(tmp_path / "ds")])
    assert result.returncode != 0 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_failed_url_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    import urllib.error

    from nanogpt import download

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=f"save it as {tmp_path / 'web' / 'input.txt'}"):
        prepare_text("https://example.com/book.txt", tmp_path / "web")


def test_streaming_writer_matches_concatenation(tmp_path):
    from nanogpt.data import write_tokens_streaming

    chunks = [np.arange(n, dtype=np.uint16) for n in (5, 0, 17, 3)]
    write_tokens_streaming(tmp_path / "train.bin", iter(chunks), 25, np.dtype(np.uint16))
    assert np.array_equal(np.fromfile(tmp_path / "train.bin", dtype=np.uint16),
                          np.concatenate(chunks))
    with pytest.raises(ValueError):
        write_tokens_streaming(tmp_path / "val.bin", iter(chunks), 30, np.dtype(np.uint16))
    assert not (tmp_path / "val.bin").exists()


# ---- finetuning ----

def test_init_from_gpt2_needs_a_gpt2_dataset(tmp_path, data_dir):
    from nanogpt.config import parse_args
    from nanogpt.data import open_dataset
    from nanogpt.trainer import read_start_checkpoint

    cfg = parse_args(tiny_args(data_dir, tmp_path / "out", init_from="gpt2"))
    with pytest.raises(UserError, match="tokenized with GPT-2 BPE.*--tokenizer gpt2"):
        read_start_checkpoint(cfg, open_dataset(data_dir, "shakespeare_char"))


def test_init_from_an_exported_char_model_finetunes_on_its_own_tokens(tmp_path, data_dir):
    """An export of a character-level run carries its tokenizer (nanogpt_tokenizer.json):
    train.py --init_from=THAT_DIR starts from its weights on a dataset of the same characters
    and refuses one of other characters, before loading anything."""
    pytest.importorskip("safetensors")
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.config import parse_args
    from nanogpt.data import load_meta, open_dataset, prepare_shakespeare_char
    from nanogpt.pretrained import export_checkpoint
    from nanogpt.trainer import read_start_checkpoint, start_model

    meta = load_meta(data_dir / "shakespeare_char")
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=meta["vocab_size"], n_layer=2, n_head=2,
                       n_embd=32, bias=True)
    source = GPT(config)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "ckpt.pt", {
        "model": source.state_dict(), "tokenizer": meta["tokenizer"],
        "model_args": dataclasses.asdict(config)})
    hf_dir = export_checkpoint(tmp_path / "run", tmp_path / "hf")

    cfg = parse_args(tiny_args(data_dir, tmp_path / "out", init_from=str(hf_dir)))
    data = open_dataset(data_dir, "shakespeare_char")
    assert read_start_checkpoint(cfg, data) == (None, None)
    model = start_model(str(hf_dir), cfg, data)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    other = tmp_path / "data" / "shakespeare_char"  # the same name, other characters
    other.mkdir(parents=True)
    (other / "input.txt").write_text("to be or not to be\n" * 200, encoding="utf-8")
    prepare_shakespeare_char(other)
    cfg = parse_args(tiny_args(tmp_path / "data", tmp_path / "out", init_from=str(hf_dir)))
    with pytest.raises(UserError, match="nanogpt_tokenizer.json is another tokenizer or "
                                        "vocabulary than dataset 'shakespeare_char'"):
        read_start_checkpoint(cfg, open_dataset(tmp_path / "data", "shakespeare_char"))


@pytest.fixture
def bpe_data_dir(tmp_path, shakespeare_text) -> Path:
    (tmp_path / "text.txt").write_text(shakespeare_text[:30000], encoding="utf-8")
    prepare_text(tmp_path / "text.txt", tmp_path / "data" / "bpe", "gpt2")
    return tmp_path / "data"


def test_pretrained_vocab_and_block_size_are_checked(tmp_path, bpe_data_dir):
    from nanogpt.config import parse_args
    from nanogpt.data import open_dataset
    from nanogpt.trainer import build_state

    save_hf_gpt2(tmp_path / "small_vocab", vocab_size=100)
    save_hf_gpt2(tmp_path / "short", vocab_size=50257, n_positions=16)
    for model_dir, message in ((tmp_path / "small_vocab", "vocab_size 100"),
                               (tmp_path / "short", "block_size 32 is longer")):
        cfg = parse_args(tiny_args(bpe_data_dir, tmp_path / "out", dataset="bpe",
                                   init_from=str(model_dir)))
        with pytest.raises(UserError, match=message):
            build_state(cfg, open_dataset(bpe_data_dir, "bpe"), None, "cpu", "float32")


@pytest.mark.slow
def test_finetune_local_gpt2_then_resume_sample_and_export(tmp_path, bpe_data_dir):
    transformers = pytest.importorskip("transformers")
    from nanogpt.checkpoint import load_model
    from nanogpt.config import parse_args
    from nanogpt.trainer import train

    hf_dir = tmp_path / "tiny-gpt2"
    save_hf_gpt2(hf_dir, vocab_size=50257, n_positions=64, scramble=False)
    out = tmp_path / "out"
    args = tiny_args(bpe_data_dir, out, dataset="bpe", init_from=str(hf_dir), max_iters=10,
                     eval_interval=5, warmup_iters=2, lr_decay_iters=10, learning_rate=1e-2,
                     min_lr=1e-3)
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stdout + result.stderr
    evals = read_log(out, "eval")
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 1.0

    model, tokenizer = load_model(out)
    assert tokenizer.kind == "gpt2" and model.config.block_size == 32  # cropped from 64
    assert model.config.gelu_approximate == "tanh"

    # resume without restating the shape: a finetuned GPT-2 keeps GPT-2's shape
    resume_args = [a for a in args if not a.startswith(("--n_layer", "--n_head", "--n_embd"))]
    train(parse_args(resume_args + ["--init_from=resume", "--max_iters=12"]))

    result = run_script("sample.py", ["--out_dir", str(out), "--start=ROMEO:", "--device=cpu",
                                      "--num_samples=1", "--max_new_tokens=8"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > len("ROMEO:")
    result = run_script("sample.py", ["--init_from", str(hf_dir), "--start=ROMEO:",
                                      "--device=cpu", "--num_samples=1", "--max_new_tokens=8"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:")

    result = run_script("export.py", ["--out_dir", str(out), "--to", str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr
    model, _ = load_model(out)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50257, (2, 32))
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(model, idx), atol=1e-5, rtol=0)
