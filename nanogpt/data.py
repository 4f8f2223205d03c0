"""Tokenizers, dataset preparation (train.bin / val.bin / meta.json) and batch sampling.

A prepared dataset directory holds `train.bin` and `val.bin` (token ids, uint16 or uint32)
and `meta.json` (vocab_size, dtype and the tokenizer, as JSON; never pickle).
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import UserError

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")


class UnknownCharactersError(UserError, ValueError):
    pass


class CharTokenizer:
    """One token per distinct character of the training text."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise UnknownCharactersError(
                f"characters not in the vocabulary: {', '.join(repr(c) for c in unknown)}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        return tokenizer_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class GPT2Tokenizer:
    """GPT-2's byte-pair encoding, through tiktoken (the `bpe` extra)."""

    kind = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self):
        try:
            import tiktoken
        except ImportError:
            raise UserError("the GPT-2 tokenizer needs tiktoken: pip install tiktoken "
                            "(or pip install -e '.[bpe]')") from None
        self._enc = tiktoken.get_encoding("gpt2")

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


def tokenizer_from_dict(d: dict):
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer kind {kind!r} in dataset or checkpoint metadata")


# ---- preparing datasets ----

def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_dataset(out_dir: str | os.PathLike, text: str, tokenizer, val_fraction: float = 0.1
                  ) -> dict:
    """Split text (first 1 - val_fraction for train), tokenize, write bins and meta.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(text)
    split = int(n * (1 - val_fraction))
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {}
    for name, part in (("train", text[:split]), ("val", text[split:])):
        ids = np.array(tokenizer.encode(part), dtype=dtype)
        _atomic_write_bytes(out / f"{name}.bin", ids.tobytes())
        counts[name] = int(ids.size)
    meta = {"vocab_size": tokenizer.vocab_size, "dtype": dtype.name,
            "tokenizer": tokenizer.to_dict(), "train_tokens": counts["train"],
            "val_tokens": counts["val"]}
    _atomic_write_bytes(out / "meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    return meta


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def download(url: str, dest: str | os.PathLike, what: str) -> None:
    """Download url to dest, or raise UserError saying how to provide the file by hand."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {what} from {url} ({reason}); download it "
                        f"yourself and save it as {dest}, then run again") from None
    os.replace(tmp, dest)


def prepare_shakespeare_char(data_dir: str | os.PathLike) -> dict:
    """data_dir/input.txt (downloaded if absent) -> char-level train/val bins + meta.json."""
    data_dir = Path(data_dir)
    src = data_dir / "input.txt"
    if not src.exists():
        download(SHAKESPEARE_URL, src, "Tiny Shakespeare")
    text = src.read_text(encoding="utf-8")
    return write_dataset(data_dir, text, CharTokenizer.from_text(text))


PREPARERS = {"shakespeare_char": prepare_shakespeare_char}


def ensure_dataset(data_dir: str | os.PathLike, dataset: str) -> Path:
    """Return the dataset directory, preparing a known dataset when it is not ready yet."""
    path = Path(data_dir) / dataset
    if all((path / f).exists() for f in ("train.bin", "val.bin", "meta.json")):
        return path
    if dataset in PREPARERS:
        PREPARERS[dataset](path)
        return path
    missing = [f for f in ("train.bin", "val.bin", "meta.json") if not (path / f).exists()]
    raise UserError(f"dataset {dataset!r} is not prepared: {', '.join(missing)} missing in "
                    f"{path}; run python data/prepare.py --input YOUR_TEXT --out {path}")


def load_meta(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read dataset metadata {path}: {e}") from None


# ---- sampling batches ----

@dataclass
class BatchSampler:
    """Random (x, y) windows from a token file, with y = x shifted by one.

    Stateless: the batch for (step, micro_step) depends only on the seed and those two
    numbers, so a resumed run sees exactly the batches it would have seen, and under
    torchrun rank r takes micro-batches r, r + world, ... of the same global stream.
    """

    path: str
    block_size: int
    batch_size: int
    seed: int
    device: str = "cpu"
    dtype: str = "uint16"

    def __post_init__(self) -> None:
        n = os.path.getsize(self.path) // np.dtype(self.dtype).itemsize
        self.num_windows = n - self.block_size  # a window reads block_size + 1 tokens
        if self.num_windows < 1:
            raise UserError(f"block_size {self.block_size} is too large for {self.path} "
                            f"({n} tokens); use --block_size={max(1, n - 2)} or less")

    def offsets(self, step: int, micro_step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, step, micro_step))
        return torch.randint(self.num_windows, (self.batch_size,), generator=g)

    def get_batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        # re-open the memmap for every batch: a long-lived one keeps its pages resident
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        ix = self.offsets(step, micro_step).numpy()
        windows = torch.from_numpy(data[ix[:, None] + np.arange(self.block_size + 1)]
                                   .astype(np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if self.device.startswith("cuda"):
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        elif self.device != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        return x, y


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), so nearby inputs differ."""
    h = 0x9E3779B97F4A7C15
    for n in numbers:
        h = (h ^ (n & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h >> 1


def get_batch(path: str, block_size: int, batch_size: int, seed: int, step: int = 0,
              micro_step: int = 0, device: str = "cpu", dtype: str = "uint16",
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch, for notebooks; training keeps a BatchSampler."""
    return BatchSampler(path, block_size, batch_size, seed, device, dtype).get_batch(
        step, micro_step)
