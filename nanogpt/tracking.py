"""Watching a run: a sample at each evaluation, Weights & Biases beside log.jsonl, and a
warning when a run overfits a small dataset.

Each is a leaf the training loop calls; none changes what the run trains. The sample draws
from its own seeded generator, never from torch's global RNG, so a resumed run stays exact.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable

import torch

from nanogpt.errors import UserError, first_line
from nanogpt.rundir import RunLog
from nanogpt.sampling import generate_pieces
from nanogpt.tokenizer import DEFAULT_PROMPT, default_prompt, tokenizer_from_dict

log = logging.getLogger("nanogpt")

SAMPLE_AUTO_TOKENS = 100
"""sample_tokens=-1: samples of this many tokens for models under SAMPLE_AUTO_MAX_PARAMS."""
SAMPLE_AUTO_MAX_PARAMS = 50_000_000
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 200  # sample.py's defaults
OVERFIT_EPOCHS = 2.0
"""Warn of overfitting when val loss rises in a run that will see its data this often."""
OVERFIT_MARGIN = 0.01
"""A rise of val loss counts when it is more than this fraction above the best (not noise)."""


# ---- a sample at each evaluation ----

def sample_length(setting: int, n_params: int) -> int:
    """Tokens per evaluation sample: the setting, or for -1 (auto) SAMPLE_AUTO_TOKENS for a
    model under SAMPLE_AUTO_MAX_PARAMS parameters (others sample slowly on a CPU), else 0."""
    if setting >= 0:
        return setting
    return SAMPLE_AUTO_TOKENS if n_params < SAMPLE_AUTO_MAX_PARAMS else 0


class EvalSample:
    """The same prompt and seed at every evaluation, so that samples compare. A model trained
    from scratch is not sampled at step 0: its random weights have nothing to say."""

    def __init__(self, tokenizer_meta: dict, prompt: str, max_new_tokens: int, seed: int,
                 from_scratch: bool = False):
        self.tokenizer = tokenizer_from_dict(tokenizer_meta)
        if prompt == DEFAULT_PROMPT:
            prompt = default_prompt(self.tokenizer)
        self.prompt, self.max_new_tokens, self.seed = prompt, max_new_tokens, seed
        self.first_iter = 1 if from_scratch else 0
        try:
            ids = self.tokenizer.encode(prompt)
        except UserError as e:
            raise UserError(f"sample_prompt {prompt!r} does not fit the dataset's tokenizer "
                            f"({e}); set --sample_prompt, or --sample_tokens=0") from None
        if not ids:
            raise UserError("sample_prompt is empty; give it some text, or set "
                            "--sample_tokens=0")

    def show(self, model: torch.nn.Module, ctx, iter_num: int, jlog: RunLog,
             interrupted: Callable[[], bool] | None = None) -> str | None:
        """Sample from model (in eval mode, under ctx), print and log it; return the text.
        interrupted() is asked after each token: when it turns true (a signal), the sample
        stops there, is neither printed nor logged, and None is returned."""
        if iter_num < self.first_iter:
            return None
        t0 = time.perf_counter()
        pieces = []
        with ctx:
            for _, piece in generate_pieces(model, self.tokenizer.encode, self.tokenizer.decode,
                                            self.prompt, max_new_tokens=self.max_new_tokens,
                                            temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K,
                                            seed=self.seed):
                if interrupted is not None and interrupted():
                    return None
                pieces.append(piece)
        text, seconds = "".join(pieces), time.perf_counter() - t0
        log.info("sample at step %d (%.2f s):\n%s%s\n", iter_num, seconds, self.prompt, text)
        jlog.write(event="sample", iter=iter_num, prompt=self.prompt, text=text,
                   seconds=seconds)
        return text


# ---- Weights & Biases ----

def check_wandb_installed() -> None:
    """UserError unless wandb can be imported (without importing it: that takes a second)."""
    if importlib.util.find_spec("wandb") is None:
        raise UserError("wandb_log=True needs wandb: pip install 'nanogpt[wandb]' (or pip "
                        "install wandb), or drop --wandb_log")


class WandbLog:
    """Sends every log.jsonl record to a W&B run (RunLog's mirror, rank 0 only).

    A record {'event': 'train', 'iter': 9, 'loss': ...} becomes {'iter': 9, 'train/loss':
    ...}; every figure is plotted against 'iter', so a resumed run's records, logged under
    a new W&B run, line up with the first one's.
    """

    def __init__(self, project: str, name: str, config: dict):
        import wandb

        try:
            self.run = wandb.init(project=project, name=name, config=config)
        except wandb.errors.Error as e:  # not logged in, no network, a bad project name
            reason = first_line(e)
            raise UserError(f"wandb_log: W&B did not start ({reason}); run `wandb login` or "
                            f"set WANDB_API_KEY (WANDB_MODE=offline logs without an account), "
                            f"or drop --wandb_log") from None
        self.run.define_metric("iter")
        self.run.define_metric("*", step_metric="iter")

    def __call__(self, record: dict) -> None:
        event = record["event"]
        row = {f"{event}/{k}": v for k, v in record.items() if k not in ("event", "iter")}
        if "iter" in record:
            row["iter"] = record["iter"]
        self.run.log(row)

    def __enter__(self) -> "WandbLog":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.run.finish(exit_code=0 if exc_type is None else 1)


# ---- overfitting ----

class OverfitWatch:
    """Warns once (on screen and in the log) when val loss has stayed more than
    OVERFIT_MARGIN above its best for two evaluations in a row, while the run has seen its
    training tokens at least once and will see them OVERFIT_EPOCHS times or more by its end:
    more steps then mostly memorise the training set."""

    def __init__(self, train_tokens: int):
        self.train_tokens = train_tokens
        self.rises = 0  # evaluations in a row with val loss above its best
        self.warned = False

    def check(self, iter_num: int, val_loss: float, best_val_loss: float, tokens_seen: int,
              tokens_at_end: int, jlog: RunLog) -> None:
        self.rises = self.rises + 1 if val_loss > best_val_loss * (1 + OVERFIT_MARGIN) else 0
        seen, at_end = tokens_seen / self.train_tokens, tokens_at_end / self.train_tokens
        if self.warned or self.rises < 2 or seen < 1 or at_end < OVERFIT_EPOCHS \
                or tokens_at_end <= tokens_seen:
            return
        self.warned = True
        message = (f"val loss {val_loss:.4f} is above its best {best_val_loss:.4f} after "
                   f"{seen:.1f} epochs of the {self.train_tokens:,} training tokens, and the "
                   f"run will see them {at_end:.1f} times by max_iters: it is likely "
                   f"overfitting (stop earlier, add data or dropout, or keep the best "
                   f"checkpoint with always_save_checkpoint=False)")
        log.warning("step %d: %s", iter_num, message)
        jlog.write(event="warning", iter=iter_num, message=message)
