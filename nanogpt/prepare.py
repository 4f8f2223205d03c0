"""Your own text -> a dataset: read in pieces, split 90/10, tokenized, written through a
memmap, so memory does not grow with the input (data/prepare.py runs prepare_text).
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nanogpt.bpe import train_bpe
from nanogpt.data import DATASET_FILES, TokenWriter, token_dtype, write_meta
from nanogpt.download import download
from nanogpt.errors import UserError
from nanogpt.textfiles import input_files, read_pieces, split_text
from nanogpt.tokenizer import END_OF_TEXT, CharTokenizer, GPT2Tokenizer

TOKENIZERS = ("char", "gpt2", "bpe")
DOC_SEPARATORS = {"char": "\n", "gpt2": END_OF_TEXT, "bpe": END_OF_TEXT}
"""Put between the files of a folder: the BPEs' end-of-document token; a newline for char."""
DEFAULT_BPE_VOCAB = 4096
MIN_SPLIT_TOKENS = 2
"""Each split needs a window of block_size + 1 tokens, so at least 2 (block_size 1)."""
BPE_TRAIN_CHARS = 200_000_000
"""The BPE learns from at most about this much training text, an even sample of pieces
beyond it: about 40 s on 2 cores, and more text hardly changes the merges of a small
vocabulary."""


def prepare_text(source: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: str = "char",
                 val_fraction: float = 0.1, vocab_size: int | None = None,
                 bpe_train_chars: int = BPE_TRAIN_CHARS) -> dict:
    """Your own text -> a dataset directory (train.bin, val.bin, meta.json) in out_dir.

    source is a UTF-8 text file, a folder (every file under it, by sorted path, one
    DOC_SEPARATORS[tokenizer] between two files; hidden files skipped) or an http(s) URL
    (saved as out_dir/input.txt). tokenizer 'bpe' trains a byte-level BPE of vocab_size ids
    (nanogpt.bpe) on the training part, or on an even sample of about bpe_train_chars of it.

    The split is decided before tokenizing: the first 1 - val_fraction of the characters
    train, the rest validate (a separator counts as one character). Files are read in pieces
    (nanogpt.textfiles) and ids written through a memmap (TokenWriter), so memory does not
    grow with the input: one pass counts the characters (and collects the char vocabulary),
    'bpe' reads the training part once more to train, a last pass tokenizes.
    """
    for name, value in (("input", source), ("out", out_dir)):
        if not str(value).strip():  # Path("") is the current folder: an unset shell variable
            raise UserError(f"--{name} is empty; pass a path")
    if tokenizer not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {tokenizer!r}; use {', '.join(TOKENIZERS)}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if vocab_size is not None and tokenizer != "bpe":
        raise UserError(f"vocab_size is for --tokenizer bpe; the {tokenizer} tokenizer's "
                        f"vocabulary is fixed by {'the text' if tokenizer == 'char' else 'GPT-2'}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; pass --out a dataset "
                        f"directory, e.g. data/notes")
    tok = GPT2Tokenizer() if tokenizer == "gpt2" else None  # a missing tiktoken fails now
    if tokenizer == "bpe":
        _check_bpe_extra()
    if str(source).startswith(("http://", "https://")):
        local = Path(out_dir) / "input.txt"
        if not local.exists():
            download(str(source), local, "the input text")
        source = local
    files = input_files(source, skip=_dataset_file_check(out_dir))
    n_chars, chars = _count_characters(files, want_chars=tokenizer == "char")
    if n_chars < 2:
        raise UserError(f"{source} holds {n_chars} characters; a dataset needs more text")
    split_at = int(n_chars * (1 - val_fraction))
    _check_split_sizes({"train": split_at, "val": n_chars - split_at}, "characters",
                       val_fraction)
    if tokenizer == "char":
        tok = CharTokenizer(chars)
    elif tokenizer == "bpe":
        tok = train_bpe(_bpe_sample(files, split_at, bpe_train_chars),
                        vocab_size or DEFAULT_BPE_VOCAB)
    counts = _write_splits(Path(out_dir), files, tok, split_at, val_fraction)
    return write_meta(out_dir, tok, counts["train"], counts["val"])


def _dataset_file_check(out_dir: str | os.PathLike):
    """path -> whether it is a file of a prepared dataset, not text: out_dir's train.bin,
    val.bin or meta.json (a folder prepared into itself), or those of a folder holding all
    three (a dataset prepared inside the input folder)."""
    out = Path(out_dir).resolve()

    def is_dataset_file(path: Path) -> bool:
        return path.name in DATASET_FILES and (
            path.parent.resolve() == out
            or all((path.parent / name).is_file() for name in DATASET_FILES))

    return is_dataset_file


def _check_bpe_extra() -> None:
    for module in ("tokenizers", "tiktoken"):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--tokenizer bpe needs {module}: pip install tokenizers tiktoken "
                            f"(or pip install -e '.[bpe]')")


def _pieces(files: list[Path], what: str) -> Iterator[str | None]:
    """The text of files in pieces, None between two files; a progress bar of bytes read."""
    from tqdm.auto import tqdm

    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, desc=what, unit="B", unit_scale=True, disable=None,
              leave=False) as bar:
        for i, path in enumerate(files):
            if i:
                yield None
            done = 0
            for text, read in read_pieces(path):
                bar.update(read - done)
                done = read
                yield text


def _bpe_sample(files: list[Path], split_at: int, max_chars: int) -> Iterator[str]:
    """The training part (the first split_at characters), or every k-th piece of it when it
    is longer than max_chars, cut into pieces of <= 64K characters for the BPE trainer (whose
    memory grows with the size of a piece)."""
    every = max(1, -(-split_at // max(1, max_chars)))
    train_part = itertools.takewhile(lambda p: p[0] == "train",
                                     _split(_pieces(files, "training the BPE"), split_at))
    for i, (_, piece) in enumerate(train_part):
        if piece is not None and i % every == 0:
            yield from split_text(piece, 1 << 16)


def _count_characters(files: list[Path], want_chars: bool) -> tuple[int, list[str]]:
    """(characters in files, separators included; the sorted distinct characters when
    want_chars), reading each file once and checking that it is UTF-8."""
    n = 0
    seen = np.zeros(0x110000, dtype=bool) if want_chars else None
    for piece in _pieces(files, "reading"):
        text = DOC_SEPARATORS["char"] if piece is None else piece
        n += len(text)
        if seen is not None:
            seen[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)] = True
    chars = [chr(c) for c in np.flatnonzero(seen)] if seen is not None else []
    return n, chars


def _split(pieces: Iterable[str | None], split_at: int) -> Iterator[tuple[str, str | None]]:
    """('train' or 'val', piece): the first split_at characters train (a None, the
    separator between two files, counts as one); a piece across the split is cut there."""
    at = 0
    for piece in pieces:
        n = 1 if piece is None else len(piece)
        if at < split_at < at + n:
            yield "train", piece[:split_at - at]
            yield "val", piece[split_at - at:]
        else:
            yield "train" if at < split_at else "val", piece
        at += n


def _piece_encoder(tok, dtype: np.dtype):
    """piece of text (or None, a separator) -> its ids as an array of dtype."""
    if isinstance(tok, CharTokenizer):
        codes = np.array([ord(c) for c in tok.chars])
        table = np.zeros(codes.max() + 1, dtype=dtype)
        table[codes] = np.arange(len(codes))

        def encode_chars(piece: str | None) -> np.ndarray:
            text = DOC_SEPARATORS["char"] if piece is None else piece
            return table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]

        return encode_chars
    separator = np.array([tok.eot_token], dtype=dtype)

    def encode_bpe(piece: str | None) -> np.ndarray:
        # a literal "<|endoftext|>" in a file stays text: only separators are the token
        return separator if piece is None else np.array(tok.encode_ordinary(piece), dtype)

    return encode_bpe


def _check_split_sizes(sizes: dict[str, int], unit: str, val_fraction: float) -> None:
    """UserError when a split has fewer than MIN_SPLIT_TOKENS characters or tokens."""
    for name, size in sizes.items():
        if size < MIN_SPLIT_TOKENS:
            raise UserError(f"the {name} split gets {size} {unit} (val_fraction {val_fraction}"
                            f" of {sum(sizes.values())}) but needs at least "
                            f"{MIN_SPLIT_TOKENS}; give more text or change --val_fraction")


def _write_splits(out: Path, files: list[Path], tok, split_at: int, val_fraction: float
                  ) -> dict[str, int]:
    """Tokenize files piece by piece into out/train.bin and out/val.bin; the id counts. Both
    files are replaced only once both splits are big enough (_check_split_sizes)."""
    dtype = token_dtype(tok.vocab_size)
    encode = _piece_encoder(tok, dtype)
    with TokenWriter(out / "train.bin", dtype) as train, \
            TokenWriter(out / "val.bin", dtype) as val:
        writers = {"train": train, "val": val}
        pieces = _split(_pieces(files, "tokenizing"), split_at)
        for split, ids in _map_ahead(lambda p: (p[0], encode(p[1])), pieces):
            writers[split].write(ids)
        _check_split_sizes({name: w.count for name, w in writers.items()}, "tokens",
                           val_fraction)
        return {name: w.commit() for name, w in writers.items()}


def _map_ahead(fn, items: Iterable, workers: int | None = None) -> Iterator:
    """fn(item) for each item, in order, computed by `workers` threads (default: one per
    core; tiktoken and numpy let go of the GIL) with at most 2 x workers items in hand."""
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_text_input(source: str | os.PathLike, separator: str = "\n") -> str:
    """The text of a UTF-8 file, or of every non-hidden file under a folder joined by
    separator, in memory (prepare_text reads in pieces instead)."""
    return separator.join("".join(text for text, _ in read_pieces(f))
                          for f in input_files(source))
