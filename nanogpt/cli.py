"""Command-line entry points behind train.py and sample.py.

User mistakes end as one line on stderr and a non-zero exit; `--debug` (or NANOGPT_DEBUG=1)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nanogpt.errors import TrainingStopped, UserError, debug_requested, os_reason, run_guarded


class _TqdmHandler(logging.Handler):
    """Log lines to stdout without tearing an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging must never kill training
            self.handleError(record)


def setup_logging(enabled: bool = True) -> None:
    logger = logging.getLogger("nanogpt")
    logger.handlers[:] = [_TqdmHandler()]
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    logger.propagate = False


# ---- train ----

TRAIN_USAGE = """usage: python train.py [--config FILE | FILE ...] [--key=value | --key value ...]

Config files are Python assignments; later files and flags win. Keys (default, meaning):
"""


def train_main(argv: list[str] | None = None) -> int:
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    if "-h" in argv or "--help" in argv:
        from nanogpt.config import help_text

        print(TRAIN_USAGE + help_text())
        return 0
    return run_guarded(lambda: _train(argv), debug)


def _train(argv: list[str]) -> int:
    from nanogpt import distributed
    from nanogpt.config import TrainConfig, given_values, parse_args
    from nanogpt.device import resolve_device
    from nanogpt.rundir import saved_run_config
    from nanogpt.trainer import train

    base = None
    given = given_values(argv)  # checked together only on top of the run's own settings
    if given.get("init_from", TrainConfig.init_from) == "resume":  # argv still wins
        saved = saved_run_config(given.get("out_dir", TrainConfig.out_dir))
        if saved is not None:
            base = {k: v for k, v in saved.items()
                    if k not in ("init_from", "overwrite", "eval_only")}
    cfg = parse_args(argv, base=base)
    dist = distributed.dist_from_env()
    setup_logging(enabled=dist.is_master)
    if not dist.enabled:
        train(cfg, start_time=process_start_time())
        return 0
    import dataclasses

    device = distributed.init_distributed(dist, resolve_device(cfg.device))
    together = False
    try:
        train(dataclasses.replace(cfg, device=device), dist, start_time=process_start_time())
        together = True
    except TrainingStopped:
        together = True  # the ranks agreed to stop at the same step
        raise
    finally:
        distributed.cleanup_distributed(together)
    return 0


def process_start_time() -> float:
    """Unix time this process started (interpreter start-up and imports count towards a run's
    time_budget); now, where /proc does not say."""
    import os
    import time

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


# ---- sample ----

class OneLineParser(argparse.ArgumentParser):
    """argparse for the entry points: a mistake is one line, and a flag is spelled in full
    (as train.py's --key=value are: an abbreviation would change meaning when a flag that
    shares its prefix is added)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):  # one line instead of usage + message
        raise UserError(f"{message} (see {self.prog} --help)")


def sample_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sample.py", description="Sample text from a trained nanogpt model.")
    p.add_argument("--out_dir", default="out", help="directory holding ckpt.pt")
    p.add_argument("--init_from", default="resume",
                   help="'resume' samples out_dir's checkpoint; a GPT-2 name (gpt2, "
                        "gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face GPT-2 directory "
                        "samples those weights")
    p.add_argument("--start", default=None,
                   help="prompt text, or FILE:path to read the prompt from a file (default: "
                        "a newline, or a char vocabulary's first character if it has none)")
    p.add_argument("--num_samples", type=int, default=10, help="samples, generated as one batch")
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top_k", type=int, default=200, help="keep the k most likely; 0 disables")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling; 1.0 disables")
    p.add_argument("--stop", action="append", default=[],
                   help="end a sample at this string (repeatable); \\n escapes work")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="precision of the weights and activations while decoding (on a "
                        "CPU the KV cache stays float32); auto: bf16 where decoding runs faster "
                        "in it (GPUs with bf16; CPUs with bf16 units; AVX2-only CPUs for one "
                        "sample; samples differ from float32 ones), else float32")
    p.add_argument("--no_cache", action="store_true", help="disable the KV cache")
    p.add_argument("--context_shift", type=int, default=None,
                   help="past block_size, drop this many oldest tokens at once (1: nanoGPT's "
                        "sliding window; default block_size // 4, much faster with the cache)")
    return p


def sample_main(argv: list[str] | None = None) -> int:
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    try:
        return run_guarded(lambda: _sample(argv), debug)
    except BrokenPipeError:  # the reader has stopped (sample.py | head): stop too, quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + 13  # as if killed by SIGPIPE, like other commands in a pipe


def _read_prompt(start: str) -> str:
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read the prompt file {path!r} given by --start: "
                        f"{e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"the prompt file {path!r} given by --start is not UTF-8 text (byte "
                        f"{e.start}: {e.reason})") from None


def _unescape(s: str) -> str:
    """'\\n' typed on a command line -> a newline; other characters stay as they are."""
    if "\\" not in s:
        return s
    try:
        return s.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise UserError(f"--stop {s!r} has a broken backslash escape") from None


def _sample(argv: list[str]) -> int:
    args = sample_parser().parse_args(argv)
    if args.top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 disables it), got {args.top_k}")
    prompt = None if args.start is None else _read_prompt(args.start)

    import torch

    from nanogpt.checkpoint import load_model
    from nanogpt.device import resolve_decode_dtype, resolve_device
    from nanogpt.inference import for_decoding
    from nanogpt.sampling import generate_pieces
    from nanogpt.tokenizer import default_prompt

    device = resolve_device(args.device)
    dtype = resolve_decode_dtype(args.dtype, device, args.num_samples)  # before loading
    if args.init_from == "resume":
        model, tokenizer = load_model(args.out_dir, device)
    else:
        from nanogpt.pretrained import load_pretrained_model

        model, tokenizer = load_pretrained_model(args.init_from, device)
    model = for_decoding(model, dtype)  # weights in dtype; the float32 ones are let go
    torch.manual_seed(args.seed)
    separator = "\n---------------\n"
    out = sys.stdout
    if prompt is None:
        prompt = default_prompt(tokenizer)
    texts = [""] * args.num_samples
    pieces = generate_pieces(
        model, tokenizer.encode, tokenizer.decode, prompt, num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k or None, top_p=args.top_p, stop=[_unescape(s) for s in args.stop],
        seed=args.seed, use_cache=not args.no_cache, context_shift=args.context_shift,
        dtype=dtype)
    out.write(prompt)
    for i, piece in pieces:  # sample 0 live, the others once the batch is done
        texts[i] += piece
        if i == 0:
            out.write(piece)
            out.flush()
    out.write(separator)
    for text in texts[1:]:
        out.write(prompt + text + separator)
    out.flush()
    return 0


# ---- export ----

def export_main(argv: list[str] | None = None) -> int:
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    return run_guarded(lambda: _export(argv), debug)


def export_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="export.py", description="Export a nanogpt checkpoint as a Hugging "
                       "Face GPT-2 directory (config.json, model.safetensors and the "
                       "tokenizer's files) that transformers' AutoModelForCausalLM, "
                       "AutoTokenizer and pipeline load.")
    p.add_argument("--out_dir", default="out", help="directory holding ckpt.pt")
    p.add_argument("--to", required=True, help="directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files an export writes in a --to that holds files")
    return p


def _export(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)
    from nanogpt.pretrained import export_checkpoint

    dest = export_checkpoint(args.out_dir, args.to, args.overwrite)
    print(f"wrote {dest}: " + ", ".join(sorted(p.name for p in dest.iterdir())))
    return 0


# ---- data/shakespeare*/prepare.py ----

def prepare_known_main(here: Path, argv: list[str] | None = None) -> int:
    """data/<name>/prepare.py: prepare the known dataset <name> (Tiny Shakespeare by
    characters or by GPT-2 BPE) in its own directory here."""
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    return run_guarded(lambda: _prepare_known(here, argv), debug)


def _prepare_known(here: Path, argv: list[str]) -> int:
    from nanogpt.data import PREPARERS

    if argv:
        raise UserError(f"prepare.py takes no arguments (got {' '.join(argv)}); for your own "
                        f"text: python data/prepare.py --input FILE --out DIR")
    try:
        meta = PREPARERS[here.name](here)
    except OSError as e:  # no permission to write here, a full disk
        raise UserError(f"cannot prepare {here}: {os_reason(e)}") from None
    print(f"{here.name}: vocab size {meta['vocab_size']}, {meta['train_tokens']:,} train "
          f"tokens, {meta['val_tokens']:,} val tokens in {here}")
    return 0
