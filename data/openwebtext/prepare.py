"""Prepare OpenWebText (~9B GPT-2 tokens) for GPT-2 pretraining, as nanoGPT does.

pip install -e '.[openwebtext]'        # datasets + tiktoken
python data/openwebtext/prepare.py [--num_proc 8] [--hf_dataset Skylion007/openwebtext]

Downloads ~54 GB into the Hugging Face cache, tokenizes in --num_proc processes, then
writes train.bin (~17 GB) and val.bin (~8.5 MB) next to this file through a memmap, one
shard at a time, so the token arrays never sit in memory whole; then meta.json.
"""
import sys
from pathlib import Path

import numpy as np

from nanogpt.cli import OneLineParser
from nanogpt.data import GPT2Tokenizer, token_dtype, write_meta, write_tokens_streaming
from nanogpt.errors import UserError, debug_requested, os_reason, run_guarded

_tokenizer = None  # one per worker process, built on first use


def tokenize(example: dict) -> dict:
    """One document -> its GPT-2 ids, each document ended by <|endoftext|>."""
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = GPT2Tokenizer()
    ids = _tokenizer.encode_ordinary(example["text"])
    ids.append(GPT2Tokenizer.eot_token)
    return {"ids": ids, "len": len(ids)}


def shards(dset, n: int):
    """The ids of dset, as n contiguous concatenated chunks."""
    for i in range(n):
        shard = dset.shard(num_shards=n, index=i, contiguous=True).with_format("numpy")
        yield np.concatenate(list(shard["ids"]))


def write_bins(out: Path, tokenized, tokenizer) -> dict[str, int]:
    """train.bin and val.bin of the tokenized splits, then meta.json, into out -> the token
    count of each split."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    totals = {}
    for name, dset in tokenized.items():
        totals[name] = int(np.asarray(dset.with_format("numpy")["len"], dtype=np.uint64).sum())
        n = min(1024, len(dset))
        chunks = tqdm(shards(dset, n), total=n, desc=f"writing {name}.bin")
        write_tokens_streaming(out / f"{name}.bin", chunks, totals[name], dtype)
    write_meta(out, tokenizer, totals["train"], totals["val"])
    return totals


def main(argv: list[str] | None = None) -> int:
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    return run_guarded(lambda: _prepare(argv), debug)


def _prepare(argv: list[str]) -> int:
    p = OneLineParser(prog="prepare.py", description="Tokenize OpenWebText with GPT-2 BPE.")
    p.add_argument("--num_proc", type=int, default=8, help="tokenizing processes")
    p.add_argument("--hf_dataset", default="Skylion007/openwebtext")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    p.add_argument("--val_fraction", type=float, default=0.0005)
    args = p.parse_args(argv)
    if args.num_proc < 1:
        raise UserError(f"--num_proc must be at least 1 (got {args.num_proc})")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val_fraction must be between 0 and 1 (got {args.val_fraction})")
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("OpenWebText needs Hugging Face datasets: pip install datasets tiktoken "
                        "(or pip install -e '.[openwebtext]')") from None
    tokenizer = GPT2Tokenizer()  # fail now, not in a worker after the download

    try:
        dataset = load_dataset(args.hf_dataset, num_proc=args.num_proc)
    except RuntimeError as e:
        raise UserError(f"could not load {args.hf_dataset} ({e}); if it says dataset scripts "
                        f"are no longer supported, pass --hf_dataset with a Parquet copy of "
                        f"OpenWebText or install an older datasets") from None
    split = dataset["train"].train_test_split(test_size=args.val_fraction, seed=2357,
                                              shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(tokenize, remove_columns=["text"], desc="tokenizing",
                          num_proc=args.num_proc)

    out = Path(args.out)
    try:
        totals = write_bins(out, tokenized, tokenizer)
    except OSError as e:  # a full disk (train.bin is ~17 GB), no permission to write --out
        raise UserError(f"cannot write {out}: {os_reason(e)}") from None
    print(f"{totals['train']:,} train tokens, {totals['val']:,} val tokens in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
