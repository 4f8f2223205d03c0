"""LoRA against a full finetune of GPT-2 124M on a CPU: step time, peak memory, checkpoint
size, and the merged export's logits.

    python benchmarks/lora.py [--work DIR] [--batch_size 4] [--iters 3] [--dtype auto]
                              [--KEY=VALUE ...]

Other --KEY=VALUE arguments are train.py settings given to every run (for example
--activation_checkpointing=True).

No network is needed: the base is a GPT-2 124M-shaped transformers.GPT2LMHeadModel with random
weights, saved as a Hugging Face directory; the data is Tiny Shakespeare in GPT-2 BPE.
1. Step time and peak RSS: nanogpt.bench runs `--finetune=full` and `--finetune=lora`
   (rank 8 on c_attn, attn.c_proj, c_fc, mlp.c_proj) from that directory, each in its own
   process (load, warm-up step, timed steps), block 256.
2. Checkpoint size: train.py runs one step of each and saves; the files are compared.
3. Merging: the LoRA run's adapters get random B (so they change the function), export.py's
   merge writes a plain GPT-2 directory, and transformers' GPT2LMHeadModel loads it; its
   logits are compared (fp32) with the unmerged LoRA model's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nanogpt import bench  # noqa: E402


def make_base(work: Path) -> Path:
    """A GPT-2 124M-shaped HF directory (random weights) and a GPT-2 BPE dataset."""
    import transformers

    from nanogpt.data import open_dataset

    hf_dir = work / "gpt2-124m-random"
    if not (hf_dir / "config.json").exists():
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(hf_dir)
    open_dataset(work / "data", "shakespeare")  # prepared from the shipped copy
    return hf_dir


def common_args(work: Path, hf_dir: Path, args, extra: list[str]) -> list[str]:
    return [f"--init_from={hf_dir}", f"--data_dir={work / 'data'}",
            "--dataset=shakespeare", "--block_size=256", f"--batch_size={args.batch_size}",
            "--device=cpu", f"--dtype={args.dtype}", "--compile=False", "--lora_rank=8",
            "--learning_rate=1e-4", "--min_lr=1e-5", "--warmup_iters=0", "--dropout=0.0"] + extra


def checkpoint_sizes(work: Path, argv: list[str]) -> dict[str, int]:
    """Bytes of ckpt.pt after one step of each kind of finetune (train.py, its own process)."""
    sizes = {}
    for kind in ("full", "lora"):
        out = work / f"out-{kind}"
        cmd = [sys.executable, str(ROOT / "train.py"), *argv, f"--finetune={kind}",
               f"--out_dir={out}", "--overwrite", "--max_iters=1", "--eval_interval=1",
               "--eval_iters=1", "--sample_tokens=0"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"train.py --finetune={kind} failed:\n{proc.stderr[-2000:]}")
        sizes[kind] = (out / "ckpt.pt").stat().st_size
    return sizes


def merged_logits_difference(work: Path) -> tuple[float, float]:
    """(max |exported merged - unmerged LoRA| logit, max |LoRA - base| logit), fp32."""
    import transformers

    from nanogpt.checkpoint import load_model
    from nanogpt.lora import merge_adapters
    from nanogpt.pretrained import export_hf

    model, _ = load_model(work / "out-lora")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters that matter: B random, as if trained for long
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    idx = torch.randint(0, 50257, (2, 256), generator=g)
    with torch.no_grad():
        unmerged = model(idx, idx)[0]
        export_hf(merge_adapters(model), work / "hf-merged")
        hf = transformers.GPT2LMHeadModel.from_pretrained(work / "hf-merged").eval()
        exported = hf(idx).logits
        base = transformers.GPT2LMHeadModel.from_pretrained(work / "gpt2-124m-random").eval()
        base_logits = base(idx).logits
    return ((exported - unmerged).abs().max().item(),
            (unmerged - base_logits).abs().max().item())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="directory for the base, data and runs "
                   "(default: a temporary one)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--iters", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="auto")
    args, extra = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        hf_dir = make_base(work)
        argv = common_args(work, hf_dir, args, extra)
        results = bench.compare(argv, [{"finetune": "full"}, {"finetune": "lora"}],
                                args.iters, args.warmup)
        first = results[0][1]
        if "error" in first:
            raise SystemExit(f"bench failed: {first['error']}")
        print(f"GPT-2 124M shape, block 256, batch {args.batch_size}, {first['device']} "
              f"{first['threads']} threads, dtype {first['dtype']}; median of {args.iters} "
              f"steps after {args.warmup} warm-up, each variant in its own process"
              + (f"; {' '.join(extra)}" if extra else ""))
        print(bench.format_table(bench.table_rows(results)))
        (_, full), (_, lora) = results
        print(f"trainable parameters: full {full['trainable_params'] / 1e6:.2f}M, LoRA "
              f"{lora['trainable_params'] / 1e6:.2f}M")
        print(f"LoRA / full: step time {lora['ms_per_iter'] / full['ms_per_iter']:.2f}x "
              f"(target <= 0.7), peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x "
              f"(target <= 0.6)")
        sizes = checkpoint_sizes(work, argv)
        print(f"checkpoint after one step: full {sizes['full'] / 2**20:.1f} MiB, LoRA "
              f"{sizes['lora'] / 2**20:.2f} MiB: 1/{sizes['full'] / sizes['lora']:.0f} "
              f"(target <= 1/20)")
        merged, adapters = merged_logits_difference(work)
        print(f"exported merged model (transformers) vs unmerged LoRA, fp32: max |logit "
              f"difference| {merged:.2e} (target <= 1e-5); the adapters move logits by up to "
              f"{adapters:.2f}")


if __name__ == "__main__":
    main()
