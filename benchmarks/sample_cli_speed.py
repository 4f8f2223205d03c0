"""Tokens/s of sample.py itself, for one or more checkouts of nanogpt side by side.

    python benchmarks/sample_cli_speed.py                       # this checkout
    python benchmarks/sample_cli_speed.py --checkouts . ../nanogpt-main --repeats 5
    python benchmarks/sample_cli_speed.py -- --dtype float32    # sample.py --dtype float32
    NANOGPT_CPU_BF16=0 python benchmarks/sample_cli_speed.py    # no bf16 units: on an AVX-512
                                                # machine auto is then float32
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        NANOGPT_CPU_BF16=0 python benchmarks/sample_cli_speed.py   # as on an AVX2-only CPU:
                                                # auto is bf16 through inference.GemvLinear
The header names this CPU's bf16 flags, torch's kernels and what auto decodes in here.

A baby GPT with random weights (6 layers, 6 heads, 384 wide, block 256, Tiny Shakespeare's
65 characters) is saved once; then each checkout's sample.py code (nanogpt.cli.sample_main,
imported from that checkout) samples it in a fresh process with sample.py's defaults and
--num_samples 1 --max_new_tokens 500, unless other sample.py arguments follow `--`. Speed is
characters streamed per second, from the first generated character to the last (start-up,
loading and the first token are left out). Checkouts take turns, so a change of machine load
hits them alike; the median of the repeats is shown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs in the measured checkout: time sample_main's writes to stdout
TIMER = r"""
import io, sys, time
import nanogpt.cli as cli
SEP = "\n---------------\n"
class Timer(io.TextIOBase):
    def __init__(self):
        self.times, self.writes, self.done = [], 0, False
    def write(self, s):
        if not self.done:
            if SEP in s:
                self.done = True
            elif self.writes:  # the first write is the prompt
                self.times.append((time.perf_counter(), len(s)))
            self.writes += 1
        return len(s)
real, timer = sys.stdout, Timer()
sys.stdout = timer
code = cli.sample_main(sys.argv[1:])
sys.stdout = real
chars = sum(n for _, n in timer.times[1:])
print(chars / (timer.times[-1][0] - timer.times[0][0]), code)
"""


def save_random_baby(out_dir: Path) -> None:
    import dataclasses

    import torch

    from nanogpt.checkpoint import checkpoint_path, save_checkpoint
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.tokenizer import CharTokenizer

    text = (ROOT / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt").read_text("utf-8")
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, bias=False,
                          vocab_size=tok.vocab_size))
    # only the fields that differ from the defaults: older checkouts lack newer fields
    default = dataclasses.asdict(GPTConfig(vocab_size=tok.vocab_size))
    args = {k: v for k, v in dataclasses.asdict(model.config).items() if v != default[k]}
    save_checkpoint(checkpoint_path(out_dir), {
        "model": model.state_dict(), "model_args": {**args, "vocab_size": tok.vocab_size},
        "tokenizer": tok.to_dict()})


def cpu_kind() -> str:
    """This CPU's bf16 flags, torch's kernels, and what this checkout's sample.py decodes in."""
    import torch

    from nanogpt.device import resolve_decode_dtype

    try:
        with open("/proc/cpuinfo") as f:
            flags = sorted({w for w in f.read().split() if w in ("avx512_bf16", "amx_bf16")})
    except OSError:
        flags = []
    return (f"CPU bf16 flags: {' '.join(flags) or 'none'}, torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, dtype auto here: "
            f"{resolve_decode_dtype('auto', 'cpu')}")


def tokens_per_second(checkout: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-c", TIMER, *args], capture_output=True, text=True,
                          env=env, cwd=checkout, check=False)
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) != 2 or fields[1] != "0":
        sys.exit(f"{checkout}: sample.py failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return float(fields[0])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkouts", nargs="+", default=[str(ROOT)],
                   help="nanogpt source trees to compare (each run imports nanogpt from it)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    checkouts = [Path(c).resolve() for c in args.checkouts]
    with tempfile.TemporaryDirectory() as tmp:
        save_random_baby(Path(tmp))
        sample_args = ["--out_dir", tmp, "--device", "cpu", "--num_samples", "1",
                       "--max_new_tokens", "500", *extra]
        runs: dict[Path, list[float]] = {c: [] for c in checkouts}
        for _ in range(args.repeats):
            for checkout in checkouts:
                runs[checkout].append(tokens_per_second(checkout, sample_args))
    first = statistics.median(runs[checkouts[0]])
    print(f"sample.py {' '.join(sample_args[2:])}, baby GPT with random weights; "
          f"NANOGPT_CPU_BF16={os.environ.get('NANOGPT_CPU_BF16', 'unset')}; {cpu_kind()}")
    print("| checkout | tokens/s (median) | vs first | runs |")
    print("| --- | --- | --- | --- |")
    for checkout, speeds in runs.items():
        median = statistics.median(speeds)
        print(f"| {checkout} | {median:.0f} | {median / first:.2f}x | "
              f"{', '.join(f'{s:.0f}' for s in speeds)} |")


if __name__ == "__main__":
    main()
