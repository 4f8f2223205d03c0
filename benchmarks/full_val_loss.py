"""Exact loss and bits per byte of trained runs over their whole validation split.

estimate_loss samples eval_iters batches; this reads every val token once, in windows of
block_size, so runs can be compared without eval-sampling noise, and, in bits per byte,
across tokenizers (the val split is the same last 10% of the text for every tokenizer).

    python benchmarks/full_val_loss.py --out_dir out-shakespeare-char [--data_dir data]
    python benchmarks/full_val_loss.py --out_dir out-char --out_dir out-bpe   # a table
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from nanogpt.checkpoint import load_checkpoint, load_model
from nanogpt.data import load_meta
from nanogpt.errors import run_guarded
from nanogpt.tokenizer import token_byte_lengths


@torch.no_grad()
def full_val_loss(model, tokens: np.ndarray, block_size: int, batch: int = 64,
                  token_bytes: np.ndarray | None = None) -> tuple[float, float]:
    """(mean next-token loss, bits per byte) over tokens, cut into consecutive windows of
    block_size; bits per byte is nan without token_bytes (bytes per token id)."""
    n_windows = (len(tokens) - 1) // block_size
    data = torch.from_numpy(tokens[: n_windows * block_size + 1].astype(np.int64))
    total, count = 0.0, 0
    for start in range(0, n_windows, batch):
        rows = range(start, min(start + batch, n_windows))
        x = torch.stack([data[r * block_size:(r + 1) * block_size] for r in rows])
        y = torch.stack([data[r * block_size + 1:(r + 1) * block_size + 1] for r in rows])
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    if token_bytes is None:
        return total / count, math.nan
    n_bytes = int(token_bytes[data[1:].numpy()].sum())
    return total / count, total / (math.log(2) * n_bytes)


def evaluate(out_dir: str, data_dir: str | None) -> dict:
    ckpt = load_checkpoint(Path(out_dir) / "ckpt.pt")
    cfg = ckpt["config"]
    ddir = Path(data_dir or cfg["data_dir"]) / cfg["dataset"]
    meta = load_meta(ddir)
    tokens = np.fromfile(ddir / "val.bin", dtype=meta.get("dtype", "uint16"))
    model, _ = load_model(out_dir)
    lengths = np.array(token_byte_lengths(meta["tokenizer"]))
    loss, bpb = full_val_loss(model, tokens, model.config.block_size, token_bytes=lengths)
    return {"run": out_dir, "tokenizer": meta["tokenizer"]["kind"], "vocab": meta["vocab_size"],
            "params": model.get_num_params(), "iter": ckpt["iter_num"],
            "seconds": ckpt.get("elapsed", math.nan), "best_val": ckpt["best_val_loss"],
            "loss": loss, "bpb": bpb, "tokens": len(tokens),
            "bytes_per_token": lengths[tokens].sum() / len(tokens)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", required=True, action="append", help="repeat for a table")
    p.add_argument("--data_dir", default=None, help="default: each run's own data_dir")
    args = p.parse_args(argv)

    def body() -> int:
        rows = [evaluate(d, args.data_dir) for d in args.out_dir]
        if len(rows) == 1:
            r = rows[0]
            print(f"{r['run']}: iter {r['iter']}, logged best val {r['best_val']:.4f}, full "
                  f"val split {r['loss']:.4f} ({r['tokens']:,} tokens), {r['bpb']:.4f} bits "
                  f"per byte")
            return 0
        print("| run | tokenizer | vocab | params | iters | train s | bytes/token | "
              "val loss | val bpb |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['run']} | {r['tokenizer']} | {r['vocab']:,} | {r['params'] / 1e6:.2f}M "
                  f"| {r['iter']:,} | {r['seconds']:.0f} | {r['bytes_per_token']:.2f} | "
                  f"{r['loss']:.4f} | **{r['bpb']:.4f}** |")
        return 0

    return run_guarded(body, debug=False)


if __name__ == "__main__":
    sys.exit(main())
