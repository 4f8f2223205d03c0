"""Training speed and memory of a config, and of variants of it side by side.

    python -m nanogpt.bench --config configs/shakespeare_char_cpu.py \
        --compare attention=flash,manual --compare compile=False,True

Every variant runs in a fresh subprocess (so peak memory is its own and no variant inherits
another's warm caches or compiled code); with --repeats > 1 the variants take turns, so a
change of machine load hits them alike. A measured step is the training loop's own:
trainer.micro_batches, then trainer.train_step (forward and backward under autocast, clip,
optimizer step); evaluation and checkpoints are left out.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BENCH_USAGE = """usage: python -m nanogpt.bench [--config FILE ...] [--key=value ...]
       [--iters N] [--warmup N] [--repeats N] [--compare KEY=V1,V2 ...]

Measures steady-state training speed (ms/iter, tokens/s, FLOP/s and fraction of the device's
measured or listed peak) and peak memory; 'runs as' is the attention path and dtype the
steps took (what attention=auto and dtype=auto chose). Each --compare adds an axis; every
combination of the axes is one variant, run in its own process. --key=value are TrainConfig
keys.
"""

BENCH_FLAGS = {"iters": 20, "warmup": 3, "repeats": 1}


def split_bench_argv(argv: list[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """argv -> (bench flags, --compare specs, the rest: config files and --key=value)."""
    flags, compares, rest = dict(BENCH_FLAGS), [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in BENCH_FLAGS or key == "compare":
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"--{key} needs a value")
                value, i = argv[i + 1], i + 1
            if key == "compare":
                compares.append(value)
            else:
                flags[key] = int(value)
        else:
            rest.append(arg)
        i += 1
    return flags, compares, rest


def variant_grid(compares: list[str]) -> list[dict[str, str]]:
    """['dtype=float32,bfloat16', 'compile=False,True'] -> every combination, as dicts."""
    axes = []
    for spec in compares:
        key, eq, values = spec.partition("=")
        if not eq or not values:
            raise ValueError(f"--compare wants KEY=V1,V2,...; got {spec!r}")
        axes.append([(key.strip(), v.strip()) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def measure_training(argv: list[str], iters: int, warmup: int) -> dict:
    """Build the run argv describes, as train() does, and time `iters` of its train_step
    after `warmup` ones.

    Returns plain numbers: ms per step (median), tokens/s, FLOPs per token, achieved FLOP/s,
    the peak it is compared with, peak memory (process RSS, and CUDA allocations on a GPU).
    """
    import torch

    from nanogpt import trainer
    from nanogpt.config import parse_args
    from nanogpt.data import open_dataset
    from nanogpt.device import (
        autocast,
        resolve_compile,
        resolve_device,
        resolve_dtype,
        set_num_threads,
    )
    from nanogpt.distributed import DistInfo
    from nanogpt.flops import training_flops_per_token

    cfg = parse_args(argv + ["--out_dir=unused"])
    if cfg.init_from == "resume":  # a benchmark starts afresh (a finetune from its weights)
        cfg = parse_args(argv + ["--out_dir=unused", "--init_from=scratch"])
    set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    data = open_dataset(cfg.data_dir, cfg.dataset)
    state = trainer.build_state(cfg, data, None, device, dtype)
    model = trainer.wrap_model(state.model, resolve_compile(cfg.compile, device), DistInfo(),
                               device)
    sampler = data.sampler("train", cfg.block_size, cfg.batch_size, cfg.seed, device)
    chunks, ctx = trainer.resolve_batch_split(cfg, device), autocast(device, dtype)

    def step(i: int) -> None:  # the training loop's step, then a wait for the device
        batches = trainer.micro_batches(sampler, cfg.seed, i, cfg.gradient_accumulation_steps,
                                        DistInfo())
        loss, _ = trainer.train_step(model, state.optimizer, batches,
                                     lr=trainer.get_lr(i, cfg), grad_clip=cfg.grad_clip,
                                     chunks=chunks, ctx=ctx, scaler=state.scaler)
        loss.item()

    t0 = time.perf_counter()
    step(0)
    first_step_s = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + iters):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    tokens = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    flops_per_token = training_flops_per_token(state.model)  # frozen weights (LoRA) cost less
    result = {
        "device": device, "dtype": dtype, "compile": model is not state.model,
        "threads": torch.get_num_threads(), "params": state.model.get_num_params(),
        "trainable_params": sum(p.numel() for p in state.model.parameters() if p.requires_grad),
        "ms_per_iter": 1000 * seconds, "ms_min": 1000 * min(times),
        "tokens_per_s": tokens / seconds, "flops_per_token": flops_per_token,
        "flops_per_s": flops_per_token * tokens / seconds, "first_step_s": first_step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result["paths"] = sorted({path for key, path in state.model.attention_plan.items()
                              if key.split("/")[2].startswith("train")}
                             or [cfg.attention])  # what attention=auto chose for training
    if device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_flops"], result["peak_source"] = device_peak(device, dtype)
    return result


def device_peak(device: str, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from): the GPU table, or a matmul measured here."""
    from nanogpt.flops import measure_matmul_flops, peak_flops

    listed = peak_flops(device, dtype)
    if listed:
        return listed, "table"
    # a small matmul for slow dtypes keeps the measurement short (bf16 without AMX: ~1 GFLOP/s)
    n = 1024 if dtype == "float32" else 256
    return measure_matmul_flops(dtype, n=n, device=device, repeats=5), f"matmul {n}"


def run_variant(argv: list[str], iters: int, warmup: int, timeout: float = 3600) -> dict:
    """measure_training in a fresh Python process; its result dict, or {'error': ...}."""
    cmd = [sys.executable, "-m", "nanogpt.bench", "--worker", json.dumps(
        {"argv": argv, "iters": iters, "warmup": warmup})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(lines[-1])


def compare(argv: list[str], variants: list[dict[str, str]], iters: int, warmup: int,
            repeats: int = 1) -> list[tuple[dict[str, str], dict]]:
    """Run each variant `repeats` times, taking turns; per variant keep the median-speed run
    (and the largest peak memory of its runs)."""
    runs: list[list[dict]] = [[] for _ in variants]
    for _ in range(repeats):
        for i, variant in enumerate(variants):
            extra = [f"--{k}={v}" for k, v in variant.items()]
            runs[i].append(run_variant(argv + extra, iters, warmup))
    out = []
    for variant, results in zip(variants, runs):
        good = sorted((r for r in results if "error" not in r), key=lambda r: r["ms_per_iter"])
        if not good:
            out.append((variant, results[0]))
            continue
        best = dict(good[len(good) // 2])
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in good)
        best["runs_ms"] = [round(r["ms_per_iter"], 2) for r in good]
        out.append((variant, best))
    return out


COLUMNS = ("variant", "runs as", "ms/iter", "tokens/s", "GFLOP/s", "% peak", "peak RSS MB",
           "1st step s")


def table_rows(results: list[tuple[dict[str, str], dict]]) -> list[list[str]]:
    """One row of strings per variant, in COLUMNS order; failed variants show their error."""
    rows = []
    for variant, r in results:
        name = " ".join(f"{k}={v}" for k, v in variant.items()) or "as configured"
        if "error" in r:
            rows.append([name, "failed: " + r["error"]] + [""] * (len(COLUMNS) - 2))
            continue
        frac = f"{100 * r['flops_per_s'] / r['peak_flops']:.1f}" if r.get("peak_flops") else "-"
        rss = f"{r['peak_rss_mb']:.0f}"
        if "peak_cuda_mb" in r:
            rss += f" (cuda {r['peak_cuda_mb']:.0f})"
        runs_as = f"{'/'.join(r.get('paths', ['?']))}, {r.get('dtype', '?')}"
        rows.append([name, runs_as, f"{r['ms_per_iter']:.1f}", f"{r['tokens_per_s']:,.0f}",
                     f"{r['flops_per_s'] / 1e9:.1f}", frac, rss, f"{r['first_step_s']:.1f}"])
    return rows


def format_table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A Markdown table, columns padded to line up in a terminal."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep] + [line(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        job = json.loads(argv[1])
        print(json.dumps(measure_training(job["argv"], job["iters"], job["warmup"])))
        return 0
    if "-h" in argv or "--help" in argv:
        print(BENCH_USAGE)
        return 0
    try:
        flags, compares, rest = split_bench_argv(argv)
        variants = variant_grid(compares)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = compare(rest, variants, flags["iters"], flags["warmup"], flags["repeats"])
    first = next((r for _, r in results if "error" not in r), None)
    if first:
        peak = (f"{first['peak_flops'] / 1e9:.0f} GFLOP/s ({first['peak_source']}, "
                f"{first['dtype']})" if first.get("peak_flops") else "unknown")
        print(f"device {first['device']}, {first['threads']} threads, "
              f"{first['params'] / 1e6:.2f}M parameters, "
              f"{first['flops_per_token'] / 1e6:.1f} MFLOP/token, peak {peak}; "
              f"median of {flags['iters']} steps after {flags['warmup']} warm-up, "
              f"{flags['repeats']} run(s) per variant")
    print(format_table(table_rows(results)))
    return 0 if all("error" not in r for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
