"""Sampling speed with and without the KV cache, on a GPT with random weights (CPU).

    python benchmarks/sample_speed.py            # baby GPT: 6 layers, 6 heads, 384 dims, block 256
    python benchmarks/sample_speed.py --dtypes auto float32 --attentions auto flash bmm manual
    python benchmarks/sample_speed.py --prompt_lens 1 200 --context_shifts 0 1 --new_tokens 100
    python benchmarks/sample_speed.py --dtypes bfloat16 --linears auto packed gemv linear native \
        --prompt_lens 1 --context_shifts 0

Each measurement runs in a fresh process, so its peak RSS is its own. Greedy decoding, as
sample.py decodes (nanogpt.sampling.generate_tokens with dtype and attention as given). 'runs
as' is what the cached run took: its attention path per phase (what attention=auto chose;
decode: one new token, eval/prefill: the prompt and refills) and its dtype (what dtype=auto
chose) and the class its Linear layers decode with. 'same' says whether the cached and uncached
runs produced the same tokens.

--linears compares how a CPU multiplies by the weights while decoding (each in its own process,
where it replaces nanogpt.inference.cpu_linear_kind): auto (what for_decoding picks here),
packed (inference.PackedLinear: oneDNN-packed weights), gemv (inference.GemvLinear: one row
through torch's F.linear, several rows in float32), linear (nn.Linear as it is: F.linear,
which hands bf16 products to oneDNN on CPUs with AVX-512) and native (nn.Linear with torch's
oneDNN matmuls switched off: torch's own kernels). A kind this machine cannot run shows why.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import resource
import time


def measure(job: dict) -> dict:
    """Tokens/s, what auto chose and peak RSS of one generation, in this (fresh) process."""
    import torch

    from nanogpt.inference import for_decoding
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.sampling import generate_tokens

    import nanogpt.inference as inference

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    kind = job["linear"]
    if kind != "auto":  # this process is fresh and measures only this job
        if kind == "native":
            torch.backends.mkldnn.enabled = False
        cls = getattr(inference, LINEAR_KINDS[kind]) if LINEAR_KINDS[kind] else None
        inference.cpu_linear_kind = lambda dtype: cls
    torch.manual_seed(0)
    model = for_decoding(GPT(GPTConfig(**job["model"])), job["dtype"], job["batch_size"])
    linear = type(model.lm_head).__name__
    idx = torch.randint(0, job["model"]["vocab_size"], (job["batch_size"], job["prompt_len"]))
    kw = dict(temperature=0.0, use_cache=job["use_cache"], context_shift=job["shift"])
    list(generate_tokens(model, idx, 8, **kw))  # warm-up
    t0 = time.perf_counter()
    tokens = torch.stack(list(generate_tokens(model, idx, job["new_tokens"], **kw)), dim=1)
    seconds = time.perf_counter() - t0
    phases: dict[str, set[str]] = {}
    for key, path in model.attention_plan.items():  # 'device/dtype/phase/shape' -> path
        phases.setdefault(key.split("/")[2], set()).add(path)
    runs_as = " ".join(f"{phase}:{'/'.join(sorted(paths))}" for phase, paths in
                       sorted(phases.items()))
    return {"tok_s": job["new_tokens"] * job["batch_size"] / seconds, "tokens": tokens.tolist(),
            "runs_as": f"{runs_as or job['model']['attention']}, {model.prepared_for_decoding}, "
                       f"{linear}",
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB


LINEAR_KINDS = {"packed": "PackedLinear", "gemv": "GemvLinear", "linear": None, "native": None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--prompt_lens", type=int, nargs="+", default=[1, 200])
    p.add_argument("--context_shifts", type=int, nargs="+", default=[0, 1],
                   help="0 is the default (block_size // 4); 1 is nanoGPT's sliding window")
    p.add_argument("--dtypes", nargs="+", default=["auto"],
                   choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--attentions", nargs="+", default=["auto"],
                   choices=["auto", "flash", "bmm", "manual"])
    p.add_argument("--linears", nargs="+", default=["auto"],
                   choices=["auto", *LINEAR_KINDS], help="how a CPU decodes Linear layers")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's")
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--vocab_size", type=int, default=65)
    args = p.parse_args(argv)
    shape = {k: getattr(args, k) for k in
             ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
    print(f"model {shape}, batch {args.batch_size}, {args.new_tokens} new tokens, greedy")
    columns = ("prompt", "shift", "dtype", "attention", "linear", "runs as", "cached tok/s",
               "uncached tok/s", "ratio", "same", "RSS cached", "RSS uncached")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    pool = multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1)
    for prompt_len in args.prompt_lens:
        for shift in args.context_shifts:
            shift = shift or args.block_size // 4
            for dtype in args.dtypes:
                for attention, linear in itertools.product(args.attentions, args.linears):
                    job = dict(model={**shape, "attention": attention}, prompt_len=prompt_len,
                               shift=shift, threads=args.threads, dtype=dtype, linear=linear,
                               batch_size=args.batch_size, new_tokens=args.new_tokens)
                    row = (prompt_len, shift, dtype, attention, linear)
                    try:
                        on, off = (pool.apply(measure, ({**job, "use_cache": c},))
                                   for c in (True, False))
                    except Exception as e:  # noqa: BLE001 -- e.g. no bf16 packing on this CPU
                        why = f"cannot run here: {type(e).__name__}: {str(e).splitlines()[0]}"
                        print("| " + " | ".join(map(str, (*row, why))) + " |", flush=True)
                        continue
                    same = "yes" if on["tokens"] == off["tokens"] else "NO"
                    cells = (*row, on["runs_as"], f"{on['tok_s']:.1f}", f"{off['tok_s']:.1f}",
                             f"{on['tok_s'] / off['tok_s']:.1f}x", same,
                             f"{on['peak_rss'] / 2**20:.0f}Mi",
                             f"{off['peak_rss'] / 2**20:.0f}Mi")
                    print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    pool.close()


if __name__ == "__main__":
    main()
