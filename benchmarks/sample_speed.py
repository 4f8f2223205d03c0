"""Sampling speed with and without the KV cache, on a GPT with random weights (CPU).

    python benchmarks/sample_speed.py            # baby GPT: 6 layers, 6 heads, 384 dims, block 256
    python benchmarks/sample_speed.py --prompt_lens 1 --context_shifts 64 --new_tokens 100

Each measurement runs in a fresh process, so its peak RSS is its own. Greedy decoding; the
'same' column says whether the cached and uncached runs produced the same tokens.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time


def measure(job: dict) -> dict:
    """Tokens/s and peak RSS of one generation, in this (fresh) process."""
    import torch

    from nanogpt.model import GPT, GPTConfig
    from nanogpt.sampling import generate_tokens

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(**job["model"])).eval()
    idx = torch.randint(0, job["model"]["vocab_size"], (job["batch_size"], job["prompt_len"]))
    kw = dict(temperature=0.0, use_cache=job["use_cache"], context_shift=job["shift"])
    list(generate_tokens(model, idx, 8, **kw))  # warm-up
    t0 = time.perf_counter()
    tokens = torch.stack(list(generate_tokens(model, idx, job["new_tokens"], **kw)), dim=1)
    seconds = time.perf_counter() - t0
    return {"tok_s": job["new_tokens"] * job["batch_size"] / seconds, "tokens": tokens.tolist(),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--prompt_lens", type=int, nargs="+", default=[1, 200])
    p.add_argument("--context_shifts", type=int, nargs="+", default=[0, 1],
                   help="0 is the default (block_size // 4); 1 is nanoGPT's sliding window")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's")
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--vocab_size", type=int, default=65)
    p.add_argument("--attention", default="auto", choices=["auto", "flash", "manual"])
    args = p.parse_args(argv)
    model = {k: getattr(args, k) for k in
             ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "attention")}
    cache_bytes = (2 * args.n_layer * args.batch_size * args.n_head * args.block_size
                   * (args.n_embd // args.n_head) * 4)  # k and v, fp32
    print(f"model {model}, batch {args.batch_size}, {args.new_tokens} new tokens, greedy; "
          f"KV cache {cache_bytes / 2**20:.2f} MiB")
    print(f"{'prompt':>6} {'shift':>5} {'cached tok/s':>12} {'uncached tok/s':>14} {'ratio':>6} "
          f"{'same':>4} {'cache MiB':>9} {'RSS cached':>10} {'RSS uncached':>12}")
    pool = multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1)
    for prompt_len in args.prompt_lens:
        for shift in args.context_shifts:
            shift = shift or args.block_size // 4
            job = dict(model=model, prompt_len=prompt_len, shift=shift, threads=args.threads,
                       batch_size=args.batch_size, new_tokens=args.new_tokens)
            on, off = (pool.apply(measure, ({**job, "use_cache": c},)) for c in (True, False))
            same = "yes" if on["tokens"] == off["tokens"] else "NO"
            print(f"{prompt_len:>6} {shift:>5} {on['tok_s']:>12.1f} {off['tok_s']:>14.1f} "
                  f"{on['tok_s'] / off['tok_s']:>5.1f}x {same:>4} "
                  f"{cache_bytes / 2**20:>9.2f} {on['peak_rss'] / 2**20:>8.0f}Mi "
                  f"{off['peak_rss'] / 2**20:>10.0f}Mi", flush=True)
    pool.close()


if __name__ == "__main__":
    main()
