"""Time to a full-split val loss on character-level Tiny Shakespeare: nanogpt configs against
nanoGPT at its CPU settings, run one after the other on this machine.

    python benchmarks/vs_nanogpt.py --nanogpt /path/to/nanoGPT \
        --configs configs/shakespeare_char_cpu_speedrun.py configs/shakespeare_char_cpu.py \
        --plot docs/speedrun.png

Each run starts from nothing: a fresh data directory, so dataset preparation counts, and a
fresh process, so interpreter start-up and imports count. The time of a run is the wall time
of its processes (nanoGPT: prepare.py, then train.py) until they exit. Its loss is measured
after it ends, on every token of the val split (benchmarks/full_val_loss.py), the same way
for both. nanoGPT runs from a copy of the checkout given (never modified) with the flags of
its README's CPU example (4 x 128, block 64, batch 12, 2000 iterations, dropout 0,
eval_iters 20), on the Tiny Shakespeare copy shipped with nanogpt. Each run's eval losses go
to RUN/log.jsonl (nanoGPT's parsed from its output, timed as they are printed), so
`--plot` can draw them all in one picture.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from full_val_loss import full_val_loss  # noqa: E402

NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                 "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                 "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                 "--lr_decay_iters=2000", "--dropout=0.0"]


def run_ours(config: str, work: Path, extra: list[str]) -> dict:
    out = work / "out"
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", config,
                           f"--data_dir={work / 'data'}", f"--out_dir={out}", *extra],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {config} failed: {proc.stderr.strip().splitlines()[-1:]}")
    from nanogpt.checkpoint import load_checkpoint, load_model

    ckpt = load_checkpoint(out / "ckpt.pt")
    model, _ = load_model(out)
    val = np.fromfile(work / "data" / ckpt["config"]["dataset"] / "val.bin",
                      dtype=np.uint16)
    return {"name": Path(config).stem + (" " + " ".join(extra) if extra else ""),
            "seconds": seconds, "steps": ckpt["iter_num"], "log": out / "log.jsonl",
            "val": full_val_loss(model, val, model.config.block_size)[0]}


def run_nanogpt(checkout: Path, work: Path) -> dict:
    repo = work / "nanoGPT"
    shutil.copytree(checkout, repo, ignore=shutil.ignore_patterns(".git", "out*", "*.bin",
                                                                  "*.pkl"))
    data = repo / "data" / "shakespeare_char"
    shutil.copy(ROOT / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt", data)
    out = work / "out-nanogpt"
    out.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    subprocess.run([sys.executable, str(data / "prepare.py")], cwd=repo, check=True,
                   capture_output=True, env=env)
    proc = subprocess.Popen([sys.executable, "train.py", *NANOGPT_FLAGS, f"--out_dir={out}"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    records = []
    for line in proc.stdout:  # "step 250: train loss 2.1, val loss 2.2"
        if line.startswith("step ") and "val loss" in line:
            parts = line.replace(",", "").replace(":", "").split()
            records.append({"event": "eval", "iter": int(parts[1]),
                            "train_loss": float(parts[4]), "val_loss": float(parts[7]),
                            "elapsed": time.time() - t0})
    if proc.wait() != 0:
        raise SystemExit("error: nanoGPT's train.py failed")
    seconds = time.time() - t0
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", repo / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout,
                         capture_output=True, text=True).stdout.strip()
    return {"name": f"nanoGPT {rev} CPU settings".replace("  ", " "),
            "seconds": seconds, "steps": ckpt["iter_num"], "log": out / "log.jsonl",
            "val": full_val_loss(model, val, ckpt["model_args"]["block_size"])[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (left unchanged)")
    p.add_argument("--configs", nargs="+",
                   default=["configs/shakespeare_char_cpu_speedrun.py"])
    p.add_argument("--extra", nargs="*", default=[], help="flags added to every nanogpt run")
    p.add_argument("--target", type=float, default=1.886)
    p.add_argument("--plot", default=None, help="draw every run's eval losses to this PNG")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs' directories here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    base = args.keep or Path(tempfile.mkdtemp(prefix="vs-nanogpt-"))
    results = []
    if args.nanogpt:
        results.append(run_nanogpt(args.nanogpt.resolve(), base / "nanogpt"))
        print(f"{results[-1]['name']}: {results[-1]['seconds']:.1f} s", flush=True)
    for i, config in enumerate(args.configs):
        results.append(run_ours(str(Path(config).resolve()), base / f"run{i}", args.extra))
        print(f"{results[-1]['name']}: {results[-1]['seconds']:.1f} s", flush=True)
    try:
        flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                        if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})
    except OSError:
        flags = ["unknown"]
    print(f"\nCPU flags: {' '.join(flags)}; {torch.get_num_threads()} threads; "
          f"target full-split val <= {args.target}")
    ref = results[0]["seconds"] if args.nanogpt else None
    print("| run | steps | wall s | full-split val | reached | speed vs nanoGPT |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        ratio = f"{ref / r['seconds']:.2f}x" if ref else "-"
        print(f"| {r['name']} | {r['steps']} | {r['seconds']:.1f} | {r['val']:.4f} | "
              f"{'yes' if r['val'] <= args.target else 'no'} | {ratio} |")
    if args.plot:
        from nanogpt.plot import plot_runs

        named = []
        for r in results:
            dest = base / "logs" / r["name"].split()[0] / "log.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(r["log"], dest)
            named.append(dest)
        plot_runs(named, args.plot, "char-level Tiny Shakespeare on this CPU", args.target)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
