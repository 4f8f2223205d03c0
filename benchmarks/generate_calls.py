"""Milliseconds per model.generate call, by number of new tokens, for checkouts side by side.

    python benchmarks/generate_calls.py                              # this checkout
    python benchmarks/generate_calls.py --checkouts ../nanogpt-old . --lengths 1 10 50 200

A notebook calls model.generate again and again; each call prepares the model for decoding
(a copy in the decoding dtype, checks) before its first token, so short generations are
where that cost shows. Each checkout runs in its own process (importing nanogpt from that
checkout) on a baby GPT with random weights (6 layers, 6 heads, 384 wide, block 256, 65
tokens), a one-token prompt, greedy; after one call to warm up, each length is timed
--calls times and the median is kept. Checkouts take turns, --repeats rounds; the table
shows the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs in the measured checkout: prints {length: median ms} as JSON
TIMER = r"""
import json, statistics, sys, time
import torch
from nanogpt.model import GPT, GPTConfig
lengths, calls = [int(n) for n in sys.argv[1].split(",")], int(sys.argv[2])
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, bias=False,
                      vocab_size=65)).eval()
idx = torch.zeros(1, 1, dtype=torch.long)
model.generate(idx, 2, temperature=0.0)
ms = {}
for n in lengths:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.generate(idx, n, temperature=0.0)
        times.append((time.perf_counter() - t0) * 1e3)
    ms[n] = statistics.median(times)
print(json.dumps(ms))
"""


def call_ms(checkout: Path, lengths: list[int], calls: int) -> dict[int, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-c", TIMER, ",".join(map(str, lengths)),
                           str(calls)], capture_output=True, text=True, env=env, cwd=checkout,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"{checkout}: failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return {int(n): ms for n, ms in json.loads(proc.stdout.splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkouts", nargs="+", default=[str(ROOT)],
                   help="nanogpt source trees to compare (each run imports nanogpt from it)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 10, 50, 200])
    p.add_argument("--calls", type=int, default=5, help="timed calls per length and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds, checkouts taking turns")
    args = p.parse_args(argv)
    checkouts = [Path(c).resolve() for c in args.checkouts]
    rounds: dict[Path, list[dict[int, float]]] = {c: [] for c in checkouts}
    for _ in range(args.repeats):
        for checkout in checkouts:
            rounds[checkout].append(call_ms(checkout, args.lengths, args.calls))
    median = {c: {n: statistics.median(r[n] for r in rs) for n in args.lengths}
              for c, rs in rounds.items()}
    print(f"model.generate, baby GPT with random weights, one-token prompt, greedy; ms per "
          f"call (median of {args.repeats} rounds of {args.calls} calls); ratio: first "
          f"checkout's time / this one's")
    print("| checkout | " + " | ".join(f"{n} tokens" for n in args.lengths) + " |")
    print("|---|" + "---|" * len(args.lengths))
    first = median[checkouts[0]]
    for checkout in checkouts:
        cells = [f"{median[checkout][n]:.0f} ({first[n] / median[checkout][n]:.2f}x)"
                 for n in args.lengths]
        print(f"| {checkout} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
