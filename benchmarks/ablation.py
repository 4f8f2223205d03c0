"""What each part of the modern recipe is worth: time to a full-split val loss with one switch
of configs/shakespeare_char_cpu_speedrun.py taken out at a time.

    python benchmarks/ablation.py [--config configs/shakespeare_char_cpu_speedrun.py] \
        [--target 1.886] [--only rope muon]

For each variant (the recipe, then the recipe with one switch set back to GPT-2's choice),
train.py runs with max_iters = the config's x 1, 1.25, 1.5, 2, 2.5, 3, 4 until the loss over
every val token (benchmarks/full_val_loss.py) is at or below the target; the row gives that
run's steps and its wall time (one process, start-up included; the dataset is prepared once
beforehand). One run per row; timings on a shared machine vary by about 10-20%.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from full_val_loss import full_val_loss  # noqa: E402

# each switch, and the flags that set it back to GPT-2's choice
VARIANTS = {
    "modern recipe": [],
    "Muon -> AdamW (lr 1.2e-2)": ["--optimizer=adamw", "--learning_rate=0.012"],
    "RoPE -> learned positions": ["--positions=learned"],
    "RMSNorm -> LayerNorm": ["--norm=layernorm"],
    "no QK-norm": ["--qk_norm=False"],
    "ReLU^2 -> GELU": ["--activation=gelu"],
    "untied -> tied head": ["--tie_embeddings=True"],
    "no logit soft-cap": ["--logit_softcap=0"],
    "no zero init": ["--zero_init=False"],
    "WSD -> cosine": ["--lr_schedule=cosine"],
}
FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def run(config: str, data_dir: Path, flags: list[str], max_iters: int) -> tuple[float, float]:
    """(wall seconds, full-split val loss) of one train.py run."""
    from nanogpt.checkpoint import load_model

    out = Path(tempfile.mkdtemp(prefix="ablation-"))
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", config,
                           f"--data_dir={data_dir}", f"--out_dir={out}", *flags,
                           f"--max_iters={max_iters}"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {flags} failed: {proc.stderr.strip().splitlines()[-1:]}")
    model, _ = load_model(out)
    val = np.fromfile(data_dir / "shakespeare_char" / "val.bin", dtype=np.uint16)
    return seconds, full_val_loss(model, val, model.config.block_size)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/shakespeare_char_cpu_speedrun.py"))
    p.add_argument("--target", type=float, default=1.886)
    p.add_argument("--only", nargs="*", default=None, help="variants whose name has these")
    args = p.parse_args(argv)
    from nanogpt.config import parse_args
    from nanogpt.data import prepare_shakespeare_char

    base_iters = parse_args(["--config", args.config]).max_iters
    data_dir = Path(tempfile.mkdtemp(prefix="ablation-data-"))
    prepare_shakespeare_char(data_dir / "shakespeare_char")
    rows = []
    for name, flags in VARIANTS.items():
        if args.only and not any(word.lower() in name.lower() for word in args.only):
            continue
        tried = []
        for factor in FACTORS:
            iters = round(base_iters * factor)
            seconds, val = run(args.config, data_dir, flags, iters)
            tried.append(f"{iters}: {val:.3f}")
            if val <= args.target:
                rows.append((name, iters, f"{seconds:.1f}", f"{val:.4f}"))
                break
        else:
            rows.append((name, f"> {iters}", "not reached", f"{val:.4f}"))
        print(f"{name}: {', '.join(tried)}", flush=True)
    print(f"\n| recipe (time to full-split val <= {args.target}) | steps | wall s | val |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
