"""Exact loss of a trained run over its whole validation split.

estimate_loss samples eval_iters batches; this reads every val token once, in windows of
block_size, so two runs can be compared without eval-sampling noise.

    python benchmarks/full_val_loss.py --out_dir out-shakespeare-char [--data_dir data]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from nanogpt.checkpoint import load_checkpoint, load_model
from nanogpt.data import load_meta
from nanogpt.errors import run_guarded


@torch.no_grad()
def full_val_loss(model, tokens: np.ndarray, block_size: int, batch: int = 64) -> float:
    """Mean next-token loss over tokens, cut into consecutive windows of block_size."""
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
    return total / count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", required=True)
    p.add_argument("--data_dir", default=None, help="default: the run's own data_dir")
    args = p.parse_args(argv)

    def body() -> int:
        ckpt = load_checkpoint(Path(args.out_dir) / "ckpt.pt")
        cfg = ckpt["config"]
        ddir = Path(args.data_dir or cfg["data_dir"]) / cfg["dataset"]
        meta = load_meta(ddir)
        tokens = np.fromfile(ddir / "val.bin", dtype=meta.get("dtype", "uint16"))
        model, _ = load_model(args.out_dir)
        loss = full_val_loss(model, tokens, model.config.block_size)
        print(f"{args.out_dir}: iter {ckpt['iter_num']}, logged best val "
              f"{ckpt['best_val_loss']:.4f}, full val split {loss:.4f} ({len(tokens):,} tokens)")
        return 0

    return run_guarded(body, debug=False)


if __name__ == "__main__":
    sys.exit(main())
