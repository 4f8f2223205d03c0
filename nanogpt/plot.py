"""Plot a run's loss against wall-clock time from its log.jsonl (needs the `plot` extra).

    python -m nanogpt.plot out-speedrun/log.jsonl -o docs/speedrun.png
    python -m nanogpt.plot out-char/log.jsonl out-bpe/log.jsonl --metric bpb -o bpb.png

A loss per token means something else for each tokenizer; bits per byte (--metric bpb) does
not, so runs with different tokenizers share one picture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nanogpt.errors import UserError, run_guarded


def read_evals(path: str | Path) -> list[dict]:
    """The 'eval' records of a log.jsonl, in order; each gets 'elapsed' (seconds since the
    run was set up), computed from 'time' for logs written before 'elapsed' existed."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("event") == "eval":
                records.append(record)
    if records and any("elapsed" not in r for r in records):
        t0 = records[0]["time"]
        for r in records:
            r.setdefault("elapsed", r["time"] - t0)
    return records


METRICS = {"loss": "loss (nats/token)", "bpb": "bits per byte of text"}


def plot_runs(logs: list[str | Path], out: str | Path, title: str | None = None,
              target: float | None = None, metric: str = "loss") -> None:
    """Save a PNG of val (solid) and train (dashed) loss, or bits per byte (metric 'bpb'),
    vs seconds, one colour per log."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib "
                        "(or pip install -e '.[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, path in enumerate(logs):
        evals = read_evals(path)
        if not evals:
            raise UserError(f"{path} has no eval records")
        if any(f"val_{metric}" not in r for r in evals):
            raise UserError(f"{path} has eval records without val_{metric} (written before "
                            f"nanogpt logged it); plot it with --metric loss")
        t = [r["elapsed"] for r in evals]
        name = Path(path).parent.name or str(path)
        val = [r[f"val_{metric}"] for r in evals]
        line, = ax.plot(t, val, marker="o", ms=3, label=f"{name} val (best {min(val):.3f})")
        ax.plot(t, [r[f"train_{metric}"] for r in evals], ls="--", color=line.get_color(),
                alpha=0.6, label=f"{name} train")
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target}")
    ax.set_xlabel("wall-clock seconds since start of the run")
    ax.set_ylabel(METRICS[metric])
    ax.set_title(title or f"{metric} vs wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from nanogpt.cli import OneLineParser

    p = OneLineParser(prog="python -m nanogpt.plot", description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", help="log.jsonl files (one curve each)")
    p.add_argument("-o", "--out", default="loss.png", help="output PNG")
    p.add_argument("--title", default=None)
    p.add_argument("--target", type=float, default=None, help="draw a horizontal target line")
    p.add_argument("--metric", choices=tuple(METRICS), default="loss",
                   help="loss (per token) or bpb (bits per byte: compares tokenizers)")

    def body() -> int:
        args = p.parse_args(argv)  # a mistake is one line too
        for log in args.logs:
            if not Path(log).is_file():
                raise UserError(f"no log file at {log}")
        plot_runs(args.logs, args.out, args.title, args.target, args.metric)
        print(f"wrote {args.out}")
        return 0

    return run_guarded(body, debug=False)


if __name__ == "__main__":
    sys.exit(main())
