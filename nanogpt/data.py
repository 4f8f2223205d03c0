"""Datasets: writing them (train.bin / val.bin / meta.json), checking them, sampling batches.

A prepared dataset directory holds `train.bin` and `val.bin` (token ids, uint16 or uint32)
and `meta.json` (vocab_size, dtype and the tokenizer, as JSON; never pickle). Your own text
becomes one through nanogpt.prepare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt.download import TINY_SHAKESPEARE, known_file
from nanogpt.errors import UserError, os_reason
from nanogpt.fileio import atomic_write
from nanogpt.randomness import mix_seed
from nanogpt.textfiles import read_text
from nanogpt.tokenizer import (  # noqa: F401 - re-exported: nanogpt.data.CharTokenizer
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    UnknownCharactersError,
    tokenizer_from_dict,
)

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
        atomic_write(out / f"{name}.bin", lambda f: f.write(ids.tobytes()))
        counts[name] = int(ids.size)
    return write_meta(out, tokenizer, counts["train"], counts["val"])


def write_meta(out_dir: str | os.PathLike, tokenizer, train_tokens: int, val_tokens: int
               ) -> dict:
    meta = {"vocab_size": tokenizer.vocab_size, "dtype": token_dtype(tokenizer.vocab_size).name,
            "tokenizer": tokenizer.to_dict(), "train_tokens": train_tokens,
            "val_tokens": val_tokens}
    text = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    atomic_write(Path(out_dir) / "meta.json", lambda f: f.write(text))
    return meta


class TokenWriter:
    """Token ids appended to a file through a memmap of at most WINDOW_TOKENS ids at a time,
    so memory stays bounded whatever the file's size. The file appears at path only when
    commit() is called; leaving the with block without it (an error) removes every trace.
    """

    WINDOW_TOKENS = 1 << 23

    def __init__(self, path: str | os.PathLike, dtype: np.dtype | str):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.write_bytes(b"")
        self.count = 0
        self._map: np.memmap | None = None
        self._map_start = 0

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._unmap()
        self.tmp.unlink(missing_ok=True)

    def write(self, ids: np.ndarray | list[int]) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        done = 0
        while done < len(ids):
            if self._map is None or self.count == self._map_start + len(self._map):
                self._next_window()
            at = self.count - self._map_start
            n = min(len(ids) - done, len(self._map) - at)
            self._map[at:at + n] = ids[done:done + n]
            done += n
            self.count += n

    def _next_window(self) -> None:
        self._unmap()  # written pages leave this process's memory
        self._map_start = self.count
        size = self.dtype.itemsize
        os.truncate(self.tmp, (self.count + self.WINDOW_TOKENS) * size)
        self._map = np.memmap(self.tmp, dtype=self.dtype, mode="r+", offset=self.count * size,
                              shape=(self.WINDOW_TOKENS,))

    def _unmap(self) -> None:
        self._map = None  # unmapped: the kernel writes the pages back; commit() fsyncs

    def commit(self) -> int:
        """Cut the file to the ids written, fsync it, move it to path; the id count."""
        self._unmap()
        os.truncate(self.tmp, self.count * self.dtype.itemsize)
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        return self.count


def write_tokens_streaming(path: str | os.PathLike, chunks: Iterable[np.ndarray], total: int,
                           dtype: np.dtype) -> None:
    """Write chunks of token ids, total in all, to path (TokenWriter: through a memmap, for
    corpora too big for memory); the file appears only once complete."""
    with TokenWriter(path, dtype) as writer:
        for chunk in chunks:
            if writer.count + len(chunk) > total:
                raise ValueError(f"more than the {total} tokens announced for {path}")
            writer.write(chunk)
        if writer.count != total:
            raise ValueError(f"{writer.count} tokens written to {path}, {total} announced")
        writer.commit()


def _shakespeare_text(data_dir: Path) -> str:
    """data_dir/input.txt when the user put one there, else the copy shipped with nanogpt."""
    src = data_dir / "input.txt"
    if not src.exists():
        src = known_file(TINY_SHAKESPEARE, dest=src)
    return read_text(src)


def prepare_shakespeare_char(data_dir: str | os.PathLike) -> dict:
    """Tiny Shakespeare (data_dir/input.txt, or the shipped copy) -> char-level train/val
    bins + meta.json in data_dir."""
    text = _shakespeare_text(Path(data_dir))
    return write_dataset(data_dir, text, CharTokenizer.from_text(text))


def prepare_shakespeare(data_dir: str | os.PathLike) -> dict:
    """Tiny Shakespeare (as above) -> GPT-2 BPE train/val bins + meta.json in data_dir."""
    tokenizer = GPT2Tokenizer()  # a missing tiktoken fails before the download
    return write_dataset(data_dir, _shakespeare_text(Path(data_dir)), tokenizer)


PREPARERS = {"shakespeare_char": prepare_shakespeare_char, "shakespeare": prepare_shakespeare}
DATASET_FILES = ("train.bin", "val.bin", "meta.json")
CHECKED_NAME = ".checked.json"
"""Beside the bins: the largest token id of each, by size and mtime, so it is read once."""


def ensure_dataset(data_dir: str | os.PathLike, dataset: str) -> Path:
    """Return the dataset directory, preparing a known dataset when it is not ready yet."""
    path = Path(data_dir) / dataset
    if all((path / f).exists() for f in DATASET_FILES):
        return path
    if dataset in PREPARERS:
        try:
            PREPARERS[dataset](path)
        except OSError as e:  # no permission to write there, a full disk, a file in the way
            raise UserError(f"cannot prepare {path}: {os_reason(e)}") from None
        return path
    missing = [f for f in DATASET_FILES if not (path / f).exists()]
    raise UserError(f"dataset {dataset!r} is not prepared: {', '.join(missing)} missing in "
                    f"{path}; run python data/prepare.py --input YOUR_TEXT --out {path}")


def _fix(dataset_dir: Path) -> str:
    """How to rebuild a dataset directory, for error messages."""
    if dataset_dir.name in PREPARERS:
        return (f"delete {dataset_dir / 'meta.json'} and run again: train.py prepares "
                f"{dataset_dir.name} itself")
    return f"prepare it again: python data/prepare.py --input YOUR_TEXT --out {dataset_dir}"


def load_meta(dataset_dir: str | os.PathLike) -> dict:
    """meta.json of a dataset, checked: vocab_size, dtype and a tokenizer that fits them."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read dataset metadata {path} ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); {_fix(dataset_dir)}") from None
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"{path} is not a nanogpt dataset's metadata: {problem}; "
                        f"{_fix(dataset_dir)}")
    meta.setdefault("dtype", "uint16")  # written before dtype was recorded
    return meta


def _meta_problem(meta: object) -> str | None:
    """What is wrong with a parsed meta.json, or None."""
    if not isinstance(meta, dict):
        return "it holds no JSON object"
    vocab = meta.get("vocab_size")
    if type(vocab) is not int or vocab < 1:
        return f"'vocab_size' must be a whole number >= 1, got {vocab!r}"
    dtype = meta.get("dtype", "uint16")
    if dtype not in ("uint16", "uint32"):
        return f"'dtype' must be 'uint16' or 'uint32', got {dtype!r}"
    if vocab > np.iinfo(dtype).max + 1:
        return f"vocab_size {vocab} does not fit the {dtype} token ids"
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict) or "kind" not in tok:
        return "'tokenizer' must be an object with a 'kind'"
    if tok["kind"] == "char":
        chars = tok.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            return "a char tokenizer needs 'chars', a list of strings"
        if len(chars) != vocab:
            return f"the char tokenizer has {len(chars)} characters but vocab_size is {vocab}"
    elif tok["kind"] == "gpt2":
        if vocab != GPT2Tokenizer.vocab_size:
            return f"a gpt2 tokenizer has vocab_size {GPT2Tokenizer.vocab_size}, not {vocab}"
    elif tok["kind"] == "bpe":
        try:
            bpe = BPETokenizer.from_dict(tok)
        except (KeyError, TypeError, ValueError) as e:
            return f"its bpe tokenizer is damaged ({e})"
        if bpe.vocab_size != vocab:
            return f"the bpe tokenizer has {bpe.vocab_size} ids but vocab_size is {vocab}"
    else:
        return f"unknown tokenizer kind {tok['kind']!r}"
    return None


def check_token_file(path: Path, dtype: str, vocab_size: int) -> int:
    """The number of tokens in path, after checking that it holds whole tokens of dtype, all
    below vocab_size. The largest id is read once, in chunks, and remembered beside the file
    (CHECKED_NAME) for as long as the file's size and mtime stay the same."""
    itemsize = np.dtype(dtype).itemsize
    stat = path.stat()
    if stat.st_size == 0 or stat.st_size % itemsize:
        raise UserError(f"{path} holds {stat.st_size} bytes, not a whole number (>= 1) of "
                        f"{dtype} tokens; it is damaged or not written for this meta.json; "
                        f"{_fix(path.parent)}")
    n = stat.st_size // itemsize
    if vocab_size > np.iinfo(dtype).max:
        return n  # no id of this dtype can be too large
    checked_file = path.parent / CHECKED_NAME
    try:
        checked = json.loads(checked_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        checked = {}
    key = [stat.st_size, stat.st_mtime_ns]
    entry = checked.get(path.name) if isinstance(checked, dict) else None
    if isinstance(entry, dict) and entry.get("key") == key:
        largest = entry["max_id"]
    else:
        data = np.memmap(path, dtype=dtype, mode="r")
        step = 1 << 24
        largest = max(int(data[i:i + step].max()) for i in range(0, n, step))
        checked = {**(checked if isinstance(checked, dict) else {}),
                   path.name: {"key": key, "max_id": largest}}
        text = json.dumps(checked).encode("utf-8")
        try:
            atomic_write(checked_file, lambda f: f.write(text))
        except OSError:
            pass  # a read-only dataset is checked again next time
    if largest >= vocab_size:
        raise UserError(f"{path} holds token id {largest}, but the vocabulary has {vocab_size} "
                        f"ids (0..{vocab_size - 1}, meta.json); the bins and meta.json come "
                        f"from different preparations; {_fix(path.parent)}")
    return n


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset directory whose meta.json and token files have been checked."""

    dir: Path
    meta: dict

    def sampler(self, split: str, block_size: int, batch_size: int, seed: int,
                device: str = "cpu", order: str = "random", micro_steps_per_step: int = 1
                ) -> "BatchSampler":
        return BatchSampler(str(self.dir / f"{split}.bin"), block_size, batch_size, seed,
                            device, self.meta["dtype"], order, micro_steps_per_step)


def open_dataset(data_dir: str | os.PathLike, dataset: str, prepare: bool = True) -> Dataset:
    """The dataset data_dir/dataset, prepared first if it is a known one that is missing (and
    prepare is True); UserError naming the file and the fix if anything in it is wrong."""
    path = Path(data_dir) / dataset
    if prepare:
        ensure_dataset(data_dir, dataset)
    elif not all((path / f).exists() for f in DATASET_FILES):
        raise UserError(f"no prepared dataset at {path} on this node (rank 0 prepared it on "
                        f"its own): prepare it at the same path on every node, or share the "
                        f"disk")
    meta = load_meta(path)
    for split in ("train", "val"):
        check_token_file(path / f"{split}.bin", meta["dtype"], meta["vocab_size"])
    return Dataset(path, meta)


# ---- sampling batches ----

@dataclass
class BatchSampler:
    """(x, y) windows of block_size tokens from a token file, with y = x shifted by one.

    Stateless: the batch for (step, micro_step) depends only on the seed and those two
    numbers, so a resumed run sees exactly the batches it would have seen, and under
    torchrun rank r takes micro-batches r, r + world, ... of the same global stream.

    order 'random': each sequence starts anywhere in the split. order 'epoch': the split is
    cut into non-overlapping windows (at an offset drawn per epoch) and each epoch takes every
    window once, in an order drawn per epoch; sequence k of the run (counted over steps,
    micro_steps_per_step micro-batches and batch_size rows) is position k of that sequence.
    """

    path: str
    block_size: int
    batch_size: int
    seed: int
    device: str = "cpu"
    dtype: str = "uint16"
    order: str = "random"
    micro_steps_per_step: int = 1

    def __post_init__(self) -> None:
        n = os.path.getsize(self.path) // np.dtype(self.dtype).itemsize
        self.num_windows = n - self.block_size  # a window reads block_size + 1 tokens
        if self.num_windows < 1 and n < 2:
            raise UserError(f"{self.path} holds {n} token(s); a split needs at least 2 (a "
                            f"window of block_size + 1); {_fix(Path(self.path).parent)} from "
                            f"more text, or with another --val_fraction")
        if self.num_windows < 1:
            raise UserError(f"block_size {self.block_size} is too large for {self.path} "
                            f"({n} tokens); use --block_size={n - 1} or less")
        if self.order not in ("random", "epoch"):
            raise ValueError(f"order must be 'random' or 'epoch', got {self.order!r}")
        # epoch order: windows at shift + j * block_size, shift in [0, slack]
        self.epoch_windows = max(1, self.num_windows // self.block_size)
        self._slack = self.num_windows - 1 - (self.epoch_windows - 1) * self.block_size
        self._epochs: dict[int, tuple[int, torch.Tensor]] = {}

    def offsets(self, step: int, micro_step: int) -> torch.Tensor:
        if self.order == "random":
            g = torch.Generator().manual_seed(mix_seed(self.seed, step, micro_step))
            return torch.randint(self.num_windows, (self.batch_size,), generator=g)
        first = (step * self.micro_steps_per_step + micro_step) * self.batch_size
        k = torch.arange(first, first + self.batch_size)
        out = torch.empty_like(k)
        for epoch in torch.unique(k // self.epoch_windows).tolist():
            shift, order = self._epoch(epoch)
            rows = k // self.epoch_windows == epoch
            out[rows] = shift + order[k[rows] % self.epoch_windows] * self.block_size
        return out

    def _epoch(self, epoch: int) -> tuple[int, torch.Tensor]:
        """(shift, window order) of an epoch, drawn from the seed and the epoch alone."""
        if epoch not in self._epochs:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x0E90C4))
            shift = int(torch.randint(self._slack + 1, (1,), generator=g))
            self._epochs = {epoch: (shift, torch.randperm(self.epoch_windows, generator=g))}
        return self._epochs[epoch]

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


def get_batch(path: str, block_size: int, batch_size: int, seed: int, step: int = 0,
              micro_step: int = 0, device: str = "cpu", dtype: str = "uint16",
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch, for notebooks; training keeps a BatchSampler."""
    return BatchSampler(path, block_size, batch_size, seed, device, dtype).get_batch(
        step, micro_step)
