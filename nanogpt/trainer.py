"""The training loop: train(cfg), and the leaves it calls (get_lr, estimate_loss, train_step).

Read train() from top to bottom: set-up, then one loop that evaluates, checkpoints, steps,
logs and stops. On a GPU a step never waits for the device: the loss and gradient norm stay
on it and are read at log intervals, evaluations and saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch

from nanogpt.checkpoint import (
    LAST_NAME,
    CheckpointError,
    TrainState,
    check_source,
    checkpoint_path,
    load_checkpoint,
    load_weights,
    lora_settings,
    model_to_restore,
    newest_checkpoint,
    run_checkpoint,
    save_checkpoint,
)
from nanogpt.config import PLAN_MIN_STEPS, TrainConfig, format_config
from nanogpt.data import BatchSampler, Dataset, open_dataset
from nanogpt.device import (
    autocast,
    resolve_compile,
    resolve_device,
    resolve_dtype,
    set_num_threads,
)
from nanogpt.distributed import (
    DistInfo,
    any_rank,
    max_over_ranks,
    on_rank0_first,
    rank0_value,
    sum_over_ranks,
)
from nanogpt.errors import TrainingStopped, UserError
from nanogpt.flops import peak_flops, training_flops_per_token
from nanogpt.lora import add_adapters, max_rank, parse_targets
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer
from nanogpt.pretrained import EXPORTED_TOKENIZER, exported_tokenizer
from nanogpt.randomness import mix_seed, seed_everything
from nanogpt.rundir import RunLock, RunLog, remove_stale_files, save_run_config
from nanogpt.signals import GracefulStop
from nanogpt.tokenizer import GPT2Tokenizer, token_byte_lengths
from nanogpt.tracking import (
    EvalSample,
    OverfitWatch,
    WandbLog,
    check_wandb_installed,
    sample_length,
)

log = logging.getLogger("nanogpt")

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "positions",
              "norm", "qk_norm", "activation", "tie_embeddings", "logit_softcap")
"""Model settings a resume must keep: they make the weights, or what the weights compute."""
# batch_split=0 on a CPU: chunks of at most this many tokens. On the baby GPT (batch 64 x block
# 256, 2 cores) 8 chunks of 2048 tokens made a step 1.4-1.5x faster than one chunk (less memory
# traffic) and cut the peak RSS from 5.3 GB to 1.4 GB; 4 chunks: as fast, 2.3 GB.
CPU_CHUNK_TOKENS = 2048
NO_CHECKPOINT = "none yet"


class TrainingDiverged(UserError):
    pass


@dataclass
class TrainResult:
    iter_num: int
    best_val_loss: float
    out_dir: str
    losses: dict[str, float] = field(default_factory=dict)
    """The last evaluation's mean loss per split, and bits per byte ('val_bpb', ...)."""
    model: GPT | None = None
    """The trained model, as it is at the end of the run (in memory)."""


def train(cfg: TrainConfig, dist: DistInfo | None = None,
          start_time: float | None = None) -> TrainResult:
    """Train a GPT as cfg says. User mistakes raise UserError before out_dir changes.

    start_time (Unix time; default now) is when the run began: the log's `elapsed` and
    cfg.time_budget count from it (train.py passes its process start).
    """
    start_time = time.time() if start_time is None else start_time
    dist = dist or DistInfo()
    set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.wandb_log and dist.is_master:
        check_wandb_installed()
    with contextlib.ExitStack() as run:
        # ---- set-up: lock out_dir, data, model and optimizer (restored when resuming) ----
        data = on_rank0_first(lambda: _claim(run, cfg), dist, device,
                              "lock out_dir and prepare the dataset")
        if data is None:  # another rank: rank 0 prepared it
            data = open_dataset(cfg.data_dir, cfg.dataset, prepare=False)
        train_data = data.sampler("train", cfg.block_size, cfg.batch_size, cfg.seed, device,
                                  cfg.batch_order,
                                  cfg.gradient_accumulation_steps * dist.world_size)
        eval_data = {s: data.sampler(s, cfg.block_size, cfg.batch_size, cfg.seed + 1 + i, device)
                     for i, s in enumerate(("train", "val"))}
        token_bytes = torch.tensor(token_byte_lengths(data.meta["tokenizer"]), device=device)
        ckpt, resumed_from = read_start_checkpoint(cfg, data)
        state = build_state(cfg, data, ckpt, device, dtype)
        del ckpt  # its tensors now live in the state
        n_sample = sample_length(cfg.sample_tokens, state.model.get_num_params())
        sampler = EvalSample(data.meta["tokenizer"], cfg.sample_prompt, n_sample, cfg.seed,
                             from_scratch=cfg.init_from == "scratch") \
            if n_sample and dist.is_master else None
        compiled = resolve_compile(cfg.compile, device)
        model = wrap_model(state.model, compiled, dist, device)
        eval_model = model.module if dist.enabled else model  # no gradient sync in eval
        split = resolve_batch_split(cfg, device)
        ctx = autocast(device, dtype)
        tokens_per_iter = (cfg.gradient_accumulation_steps * dist.world_size * cfg.batch_size
                           * cfg.block_size)
        resolved = dict(device=device, dtype=dtype, compile=compiled,
                        world_size=dist.world_size, tokens_per_iter=tokens_per_iter,
                        batch_split=split, sample_tokens=n_sample,
                        params=state.model.get_num_params(),
                        trainable_params=_trainable(state.model))
        wandb = None
        if cfg.wandb_log and dist.is_master:  # every record of log.jsonl goes there too
            name = cfg.wandb_run_name or Path(cfg.out_dir).resolve().name
            wandb = run.enter_context(WandbLog(cfg.wandb_project, name,
                                               {**cfg.to_dict(), "resolved": resolved}))
        if dist.is_master:  # out_dir changes from here on
            remove_stale_files(cfg.out_dir)
            if cfg.init_from != "resume":  # an older run's; --overwrite was given
                (Path(cfg.out_dir) / LAST_NAME).unlink(missing_ok=True)
            save_run_config(cfg.out_dir, cfg.to_dict())
        jlog = RunLog(cfg.out_dir if dist.is_master else None, append=cfg.init_from == "resume",
                      mirror=wandb)
        _log_start(cfg, state, resolved, dist, resumed_from, jlog)
        clock_start = start_time - state.elapsed  # elapsed counts on across resumes
        budget = TimeBudget(cfg.time_budget, clock_start, cfg) if cfg.time_budget else None
        if state.planned_iters is not None:  # a resumed time-budgeted run keeps its plan
            cfg = planned(cfg, state.planned_iters)
        watch = DivergenceWatch(device)
        train_tokens = data.meta["train_tokens"]
        overfit = OverfitWatch(train_tokens)
        peak = peak_flops(device, dtype)
        flops_per_iter = training_flops_per_token(state.model) * tokens_per_iter
        last_good = f"{resumed_from} (iter {state.iter_num})" if resumed_from else NO_CHECKPOINT
        stop = run.enter_context(GracefulStop())
        bar = run.enter_context(_progress_bar(cfg, state.iter_num, dist))
        losses: dict[str, float] = {}
        t_log, steps_since_log = time.perf_counter(), 0

        # ---- the loop ----
        while True:
            # evaluate, and checkpoint what improved
            if state.iter_num % cfg.eval_interval == 0 or state.iter_num == cfg.max_iters \
                    or cfg.eval_only:
                t_eval = time.perf_counter()
                watch.check(dist, last_good)
                # one process leaves a signalled evaluation at once (under DDP the ranks
                # agree at log intervals only, so they finish it)
                signalled = None if dist.enabled else (lambda: stop.signum is not None)
                losses = estimate_loss(eval_model, eval_data, cfg.eval_iters, ctx, dist, split,
                                       token_bytes, signalled)
                if losses is None:  # a signal during the evaluation: save now, not after it
                    stop_for_signal(state, cfg, stop, dist, jlog, clock_start, watch,
                                    last_good)
                log.info("step %d: train loss %.4f, val loss %.4f, val bpb %.4f",
                         state.iter_num, losses["train"], losses["val"], losses["val_bpb"])
                if sampler is not None:  # the same prompt and seed each time: samples compare
                    sampler.show(state.model, ctx, state.iter_num, jlog, signalled)
                    if signalled is not None and signalled():  # mid-sample: save now, as
                        stop_for_signal(state, cfg, stop, dist, jlog, clock_start, watch,
                                        last_good)  # above (log.jsonl has none of this eval)
                jlog.write(event="eval", iter=state.iter_num, train_loss=losses["train"],
                           val_loss=losses["val"], train_bpb=losses["train_bpb"],
                           val_bpb=losses["val_bpb"], tokens=state.tokens_seen,
                           epochs=state.tokens_seen / train_tokens, time=time.time(),
                           elapsed=time.time() - clock_start)
                overfit.check(state.iter_num, losses["val"], state.best_val_loss,
                              state.tokens_seen, state.tokens_seen + tokens_per_iter
                              * (cfg.max_iters - state.iter_num), jlog)
                improved = losses["val"] < state.best_val_loss
                state.best_val_loss = min(state.best_val_loss, losses["val"])
                if state.iter_num > 0 and (improved or cfg.always_save_checkpoint) \
                        and not cfg.eval_only:
                    last_good = save(state, checkpoint_path(cfg.out_dir), clock_start, dist,
                                     jlog, "eval", last_good)
                t_log, steps_since_log = time.perf_counter(), 0  # eval time is not step time
                if budget:
                    budget.evaluated(t_log - t_eval)
            if state.iter_num >= cfg.max_iters or cfg.eval_only:
                break

            # one optimizer step
            lr = get_lr(state.iter_num, cfg)
            batches = micro_batches(train_data, cfg.seed, state.iter_num,
                                    cfg.gradient_accumulation_steps, dist)
            loss, grad_norm = train_step(model, state.optimizer, batches, lr=lr,
                                         grad_clip=cfg.grad_clip, chunks=split, ctx=ctx,
                                         scaler=state.scaler)
            watch.record(state.iter_num, loss, grad_norm, state.scaler is not None)
            state.iter_num += 1
            state.tokens_seen += tokens_per_iter
            steps_since_log += 1
            bar.update(1)

            # a time budget: plan the run's length from the measured speed (under DDP the
            # ranks agree at log intervals, and all take rank 0's plan)
            at_log = state.iter_num % cfg.log_interval == 0
            if budget and (at_log or not dist.enabled) and any_rank(
                    budget.due(state.iter_num, cfg, state.planned_iters), dist, device):
                loss.item()  # wait for the device: the steps so far are really done
                state.planned_iters = rank0_value(
                    budget.plan(state.iter_num, cfg, state.planned_iters), dist, device)
                cfg = planned(cfg, state.planned_iters)
                bar.total = cfg.max_iters
                bar.refresh()
                jlog.write(event="plan", iter=state.iter_num, max_iters=cfg.max_iters,
                           step_ms=budget.step_seconds * 1000, eval_s=budget.eval_seconds)

            # log: the step's one wait for the device
            if at_log:
                watch.check(dist, last_good)
                dt = (time.perf_counter() - t_log) / steps_since_log
                t_log, steps_since_log = time.perf_counter(), 0
                lossf = sum_over_ranks(loss.detach().clone(), dist).item() / dist.world_size
                record = dict(event="train", iter=state.iter_num - 1, loss=lossf, lr=lr,
                              grad_norm=grad_norm.item(), ms=dt * 1000,
                              tok_per_s=tokens_per_iter / dt, tokens=state.tokens_seen,
                              epochs=state.tokens_seen / train_tokens,
                              elapsed=time.time() - clock_start)
                if peak:
                    record["mfu"] = flops_per_iter / dt / peak
                jlog.write(**record)
                _show_step(bar, record)

            # stop on Ctrl-C / SIGTERM (under DDP all ranks agree at log intervals)
            if stop_requested(stop, dist, device, at_log):
                stop_for_signal(state, cfg, stop, dist, jlog, clock_start, watch, last_good)
    return TrainResult(state.iter_num, state.best_val_loss, cfg.out_dir, losses, state.model)


# ---- the leaves of one step ----

def get_lr(it: int, cfg: TrainConfig) -> float:
    """The learning rate of step it: linear warmup (never 0 at step 0), then decay to min_lr
    by lr_decay_iters (default max_iters): cosine from the end of warmup, or for 'wsd' flat
    until the last decay_fraction of the run, then linear. Other groups' rates (Muon,
    embeddings) follow in proportion."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = max(cfg.warmup_iters, decay_iters * (1 - cfg.decay_fraction))
        if it < decay_start:
            return cfg.learning_rate
        ratio = (it - decay_start) / max(1, decay_iters - decay_start)
        return cfg.learning_rate + ratio * (cfg.min_lr - cfg.learning_rate)
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def micro_batches(sampler: BatchSampler, seed: int, step: int, accum: int, dist: DistInfo
                  ) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """This rank's (x, y, dropout seed) for each micro-step of step.

    Micro-step m of rank r is global micro-step m * world_size + r: the batch and the dropout
    seed depend on (seed, step, global micro-step) alone, so a resumed run, and the same run
    on any number of ranks, draw the same batches and masks.
    """
    out = []
    for micro in range(accum):
        global_micro = micro * dist.world_size + dist.rank
        x, y = sampler.get_batch(step, global_micro)
        out.append((x, y, mix_seed(seed, step, global_micro)))
    return out


def batch_chunks(x: torch.Tensor, y: torch.Tensor, chunks: int):
    """(x, y, weight) for `chunks` near-equal slices of a batch; weight = slice / batch size,
    so the weighted mean of the slices' mean losses is the batch's mean loss."""
    for xc, yc in zip(x.tensor_split(chunks), y.tensor_split(chunks)):
        yield xc, yc, xc.size(0) / x.size(0)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches: list[tuple[torch.Tensor, torch.Tensor, int]], *, lr: float,
               grad_clip: float, chunks: int = 1, ctx=contextlib.nullcontext(),
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step: forward and backward over the micro-batches (each as `chunks`
    chunks), clip, update. Returns (mean loss, gradient norm) as tensors on the device.

    Each chunk's loss is weighted by its share of the batch: without dropout the gradient is
    the whole batch's (up to float rounding); with dropout each chunk draws its own masks, so
    it is the same in distribution. Under DDP, gradients are all-reduced once, in the
    backward of the last chunk. grad_clip 0 measures the norm without clipping.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    no_sync = getattr(model, "no_sync", None)  # DDP
    loss_sum = None
    for i, (x, y, seed) in enumerate(batches):
        torch.manual_seed(seed)  # this micro-step's dropout masks
        for j, (xc, yc, weight) in enumerate(batch_chunks(x, y, chunks)):
            last = i == len(batches) - 1 and j == chunks - 1
            with (contextlib.nullcontext() if last or no_sync is None else no_sync()):
                with ctx:
                    _, loss = model(xc, yc)
                    loss = loss * (weight / len(batches))
                (scaler.scale(loss) if scaler else loss).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    if scaler:
        scaler.step(optimizer)  # skips the update when fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, samplers: dict[str, BatchSampler], eval_iters: int,
                  ctx=contextlib.nullcontext(), dist: DistInfo = DistInfo(),
                  chunks: int = 1, token_bytes: torch.Tensor | None = None,
                  interrupted: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """Mean loss over eval_iters fixed batches per split, shared out among the ranks; with
    token_bytes (bytes of text per token id, on the device) also '<split>_bpb', bits per
    byte: the summed loss of the targets, in bits, over the bytes of text they decode to.
    Special tokens count 0 bytes, but their loss counts: marking document ends has a cost.

    Eval batches come from their own seeded stream: they never move the training stream or
    the global RNG, and every eval sees the same batches, so evals compare like with like.
    Rank r takes batches r, r + world_size, ...: any world size averages the same batches.
    Sums stay on the device until the end of each split: no batch waits for the device.
    None when interrupted() turns true before a batch (a signal: the run saves without
    waiting for the rest).
    """
    was_training = model.training
    model.eval()
    out = {}
    for split, sampler in samplers.items():
        total = torch.zeros((), device=sampler.device)
        n_bytes = torch.zeros((), dtype=torch.long, device=sampler.device)
        for k in range(dist.rank, eval_iters, dist.world_size):
            if interrupted is not None and interrupted():
                model.train(was_training)
                return None
            x, y = sampler.get_batch(k)
            for xc, yc, weight in batch_chunks(x, y, chunks):
                with ctx:
                    _, loss = model(xc, yc)
                total += loss.float() * weight
                if token_bytes is not None:
                    n_bytes += token_bytes[yc].sum()
        out[split] = (sum_over_ranks(total, dist) / eval_iters).item()
        if token_bytes is not None:  # every batch has as many targets: loss sum = mean x count
            nats = out[split] * eval_iters * sampler.batch_size * sampler.block_size
            n_bytes = sum_over_ranks(n_bytes, dist).item()
            out[f"{split}_bpb"] = nats / (math.log(2) * n_bytes) if n_bytes else math.nan
    model.train(was_training)
    return out


class DivergenceWatch:
    """The first step whose loss or gradient norm was not finite, remembered on the device.

    record() costs no wait for the device; check() reads it (at log intervals, evaluations
    and saves) and stops the run naming that step and the last good checkpoint. Non-finite
    weights are thus never saved. An fp16 overflow of the gradient is not divergence: the
    GradScaler skips that update.
    """

    def __init__(self, device: str):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.values = torch.zeros(2, device=device)  # its loss and gradient norm

    def record(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor,
               scaled: bool = False) -> None:
        bad = ~torch.isfinite(loss) if scaled else ~(torch.isfinite(loss)
                                                      & torch.isfinite(grad_norm))
        first = bad & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.values = torch.where(first, torch.stack([loss.float(), grad_norm.float()]),
                                  self.values)

    def check(self, dist: DistInfo, last_good: str) -> None:
        step = max_over_ranks(self.step.clone(), dist).item()
        if step >= 0:
            loss, norm = self.values.tolist()
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
            raise TrainingDiverged(f"{what} at iter {step}; training stopped and the "
                                   f"weights since are not saved; last good checkpoint: "
                                   f"{last_good}")


def save(state: TrainState, path: Path, clock_start: float, dist: DistInfo, jlog: RunLog,
         reason: str, last_good: str) -> str:
    """Write state to path (rank 0) and log it; return the new last-good description.
    A failed write stops the run, naming the last good checkpoint."""
    if dist.is_master:
        if not all(torch.isfinite(p).all() for p in state.model.parameters()):
            raise TrainingDiverged(f"refusing to save non-finite weights at iter "
                                   f"{state.iter_num}; last good checkpoint: {last_good}")
        state.elapsed = time.time() - clock_start
        try:
            save_checkpoint(path, state.to_checkpoint())
        except CheckpointError as e:
            if last_good == NO_CHECKPOINT:
                raise CheckpointError(f"{e}; no checkpoint of this run was saved before; fix "
                                      f"that and start again") from None
            raise CheckpointError(f"{e}; the last good checkpoint is {last_good}; fix that "
                                  f"and resume with --init_from=resume") from None
        jlog.write(event="checkpoint", iter=state.iter_num, reason=reason, path=str(path))
    return f"{path} (iter {state.iter_num})"


class TimeBudget:
    """Plans the length of a run that must end within `seconds` of `start` (Unix time),
    final evaluation and checkpoint included, from the measured step and eval times.

    The first plan comes once PLAN_MIN_STEPS steps are timed. With the 'wsd' schedule, whose
    learning rate stays flat until the decay, the plan is made again from the latest timings
    every 5% of the budget, so a machine that slows down or speeds up still ends on time with
    a whole decay; once the decay has begun a new plan may only end sooner (the decay then
    steepens). A cosine schedule is planned once, during warmup.
    """

    def __init__(self, seconds: float, start: float, cfg: TrainConfig):
        self.seconds, self.start = seconds, start
        self.cap = cfg.max_iters  # the plan never goes past the configured max_iters
        self.replan = cfg.lr_schedule == "wsd"
        self.eval_seconds = 0.0
        self.step_seconds = 0.0
        self.window: tuple[int, float] | None = None  # (iter, perf_counter) of a sync point
        self.last_plan = -math.inf  # perf_counter of the last plan

    def evaluated(self, seconds: float) -> None:
        """An evaluation (and its save) took seconds; the device is idle now."""
        self.eval_seconds = max(self.eval_seconds, seconds)
        self.window = None

    def due(self, iter_num: int, cfg: TrainConfig, planned: int | None) -> bool:
        """Whether to plan now (the first step after an evaluation or plan is not timed)."""
        now = time.perf_counter()
        if self.window is None:
            self.window = (iter_num, now)
            return False
        steps, seconds = iter_num - self.window[0], now - self.window[1]
        if steps < PLAN_MIN_STEPS or seconds < min(2.0, 0.01 * self.seconds):
            return False
        if planned is None:
            return True
        return self.replan and iter_num < planned - 1 \
            and now - self.last_plan >= 0.05 * self.seconds

    def plan(self, iter_num: int, cfg: TrainConfig, planned: int | None = None) -> int:
        """The most steps (at most the configured max_iters) whose remaining steps,
        evaluations and final checkpoint end before the budget, with a margin of 2% + 1 s.
        Call when the device has finished the steps so far."""
        now = time.perf_counter()
        self.step_seconds = (now - self.window[1]) / (iter_num - self.window[0])
        self.window, self.last_plan = (iter_num, now), now
        left = self.seconds - (time.time() - self.start) - (0.02 * self.seconds + 1.0)

        def cost(n: int) -> float:
            evals = n // cfg.eval_interval - iter_num // cfg.eval_interval \
                + (n % cfg.eval_interval != 0)
            return (n - iter_num) * self.step_seconds + evals * self.eval_seconds

        n = self.cap
        if cost(n) > left:
            per_step = self.step_seconds + self.eval_seconds / cfg.eval_interval
            n = max(iter_num, min(n, iter_num + int((left - self.eval_seconds) / per_step)))
            while n > iter_num and cost(n) > left:
                n -= 1
            while n < self.cap and cost(n + 1) <= left:
                n += 1
        if planned is not None and iter_num >= max(cfg.warmup_iters,
                                                   planned * (1 - cfg.decay_fraction)):
            n = min(n, planned)  # decaying already: end sooner if need be, never later
        log.info("time budget %.0f s: %.1f ms/step, %.1f s/eval: %d steps in all",
                 self.seconds, self.step_seconds * 1000, self.eval_seconds, n)
        return n


def planned(cfg: TrainConfig, max_iters: int) -> TrainConfig:
    """cfg with the planned length (the schedule decays to it)."""
    return dataclasses.replace(cfg, max_iters=max_iters)


def stop_for_signal(state: TrainState, cfg: TrainConfig, stop: GracefulStop, dist: DistInfo,
                    jlog: RunLog, clock_start: float, watch: DivergenceWatch,
                    last_good: str) -> NoReturn:
    """Save the run where it stands (last.pt where ckpt.pt holds the best model; nothing for
    eval_only) and end it with TrainingStopped, exit code 128 + the signal."""
    code = 128 + (stop.signum or signal.SIGTERM)
    if cfg.eval_only:
        raise TrainingStopped(f"stopped by {stop.name()} during the evaluation; eval_only "
                              f"saves nothing", code)
    path = checkpoint_path(cfg.out_dir)
    if not cfg.always_save_checkpoint:  # ckpt.pt is the best model: keep it
        path = path.with_name(LAST_NAME)
    watch.check(dist, last_good)
    save(state, path, clock_start, dist, jlog, "signal", last_good)
    raise TrainingStopped(f"stopped by {stop.name()}: checkpoint saved to {path} at iter "
                          f"{state.iter_num}; resume with the same command plus "
                          f"--init_from=resume", code)


def stop_requested(stop: GracefulStop, dist: DistInfo, device: str, agree: bool) -> bool:
    """Whether a signal asks to stop now. Every rank must stop at the same step, or the others
    would wait in a collective: under DDP ranks agree only when `agree` (at log intervals)."""
    if not dist.enabled:
        return stop.signum is not None
    if not agree:
        return False
    flag = max_over_ranks(torch.tensor([stop.signum or 0], device=device), dist).item()
    if flag and stop.signum is None:
        stop.signum = int(flag)
    return bool(flag)


# ---- set-up ----

def _claim(run: contextlib.ExitStack, cfg: TrainConfig) -> Dataset:
    """Rank 0's part of set-up: lock out_dir for this run, prepare and check the dataset."""
    run.enter_context(RunLock(cfg.out_dir))
    return open_dataset(cfg.data_dir, cfg.dataset)


def read_start_checkpoint(cfg: TrainConfig, data: Dataset) -> tuple[dict | None, Path | None]:
    """(checkpoint, its path) to resume from, or (None, None) for a fresh run; UserError when
    the run cannot start as asked (nothing to resume, another shape or tokenizer, a scratch
    run over an existing checkpoint, a GPT-2 start on a dataset of other tokens). A start
    from another run's checkpoint is checked against the dataset where it is loaded, once
    (start_model)."""
    meta = data.meta
    if cfg.vocab_size is not None and cfg.vocab_size != meta["vocab_size"]:
        raise UserError(f"vocab_size {cfg.vocab_size} does not match the dataset's "
                        f"{meta['vocab_size']} ({data.dir / 'meta.json'}); drop --vocab_size")
    existing = newest_checkpoint(cfg.out_dir)
    if cfg.init_from != "resume":
        if existing is not None and not cfg.overwrite:
            raise UserError(f"{existing} already exists; resume it with --init_from=resume, "
                            f"choose another --out_dir, or pass --overwrite to replace it")
        if cfg.init_from != "scratch":
            check_source(cfg.init_from)
        start = run_checkpoint(cfg.init_from) if cfg.init_from != "scratch" else None
        if start is not None and start.resolve().parent == Path(cfg.out_dir).resolve():
            raise UserError(f"init_from={cfg.init_from} is this run's own out_dir; use "
                            f"--init_from=resume to continue it")
        if cfg.init_from != "scratch" and start is None:
            check_pretrained_tokenizer(cfg, data)
        return None, None
    if existing is None:
        raise UserError(f"init_from=resume but there is no checkpoint at "
                        f"{checkpoint_path(cfg.out_dir)}; check --out_dir or start with "
                        f"--init_from=scratch")
    ckpt = load_checkpoint(existing)
    if ckpt.get("tokenizer") != meta["tokenizer"]:  # before the shape: it sets vocab_size
        raise UserError(f"cannot resume: dataset {cfg.dataset!r} uses another tokenizer or "
                        f"vocabulary than the checkpoint {existing}; pass the --dataset it "
                        f"was trained on")
    saved, wanted = ckpt["model_args"], {k: getattr(cfg, k) for k in SHAPE_KEYS}
    wanted["vocab_size"] = cfg.vocab_size or meta["vocab_size"]
    # a finetuned GPT-2 has GPT-2's shape whatever n_layer etc. say, as when it started
    keys = ("block_size", "vocab_size") if ckpt.get("pretrained") else SHAPE_KEYS
    diff = [f"{k}={wanted[k]!r} (checkpoint has {saved[k]!r})" for k in keys
            if saved.get(k) != wanted[k]]
    if diff:
        raise UserError("cannot resume: the model shape differs from the checkpoint: "
                        + ", ".join(diff) + "; use the checkpoint's values")
    check_finetune_matches(cfg, ckpt.get("lora"))
    saved_optimizer = (ckpt.get("config") or {}).get("optimizer", cfg.optimizer)
    if saved_optimizer != cfg.optimizer:
        raise UserError(f"cannot resume: the checkpoint was trained with optimizer="
                        f"{saved_optimizer!r}, not {cfg.optimizer!r}; resume with "
                        f"--optimizer={saved_optimizer}, or start a new run from its weights "
                        f"with --init_from={cfg.out_dir} and another --out_dir")
    return ckpt, existing


def check_pretrained_tokenizer(cfg: TrainConfig, data: Dataset) -> None:
    """UserError unless the dataset's tokens are those of the weights in cfg.init_from (a
    GPT-2 name or a Hugging Face directory): GPT-2's BPE, or the tokenizer a nanogpt export
    kept beside them. Checked before anything loads."""
    tokenizer, kind = exported_tokenizer(cfg.init_from), data.meta["tokenizer"]["kind"]
    if tokenizer is None and kind != "gpt2":
        raise UserError(f"init_from={cfg.init_from} needs a dataset tokenized with GPT-2 "
                        f"BPE, but {data.dir} uses the {kind!r} tokenizer; run python "
                        f"data/prepare.py --input YOUR_TEXT --tokenizer gpt2 --out "
                        f"{Path(cfg.data_dir) / 'NAME'} and pass --dataset NAME")
    if tokenizer is not None and tokenizer != data.meta["tokenizer"]:
        raise UserError(f"cannot start from {cfg.init_from}: its {EXPORTED_TOKENIZER} is "
                        f"another tokenizer or vocabulary than dataset {cfg.dataset!r}'s "
                        f"({tokenizer.get('kind')!r}, {data.dir} has {kind!r}); pass the "
                        f"--dataset it was trained on")


def check_finetune_matches(cfg: TrainConfig, lora: dict | None) -> None:
    """UserError unless cfg's finetune settings are those of the checkpoint being resumed."""
    if (cfg.finetune == "lora") != (lora is not None):
        kind = "a LoRA finetune" if lora else "not a LoRA finetune"
        raise UserError(f"cannot resume: the checkpoint is {kind}, but finetune="
                        f"{cfg.finetune!r}; resume with the finetune setting it was started "
                        f"with")
    if lora is None:
        return
    wanted = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
              "targets": parse_targets(cfg.lora_targets)}
    diff = [f"lora_{k}={wanted[k]!r} (checkpoint has {lora[k]!r})" for k in wanted
            if wanted[k] != lora[k]]
    if diff:
        raise UserError("cannot resume: the adapters differ from the checkpoint's: "
                        + ", ".join(diff) + "; use the checkpoint's values")


def build_state(cfg: TrainConfig, data: Dataset, ckpt: dict | None, device: str,
                dtype: str) -> TrainState:
    """Model, optimizer and GradScaler on device, restored from ckpt when resuming."""
    seed_everything(cfg.seed)
    pretrained = None if cfg.init_from in ("scratch", "resume") else cfg.init_from
    lora = None
    if ckpt is not None:  # a LoRA run's: its base, checked against the saved hash
        model = model_to_restore(ckpt, cfg.lora_dropout, **cfg.runtime_options())
    elif pretrained is not None:
        model = start_model(pretrained, cfg, data)
    else:
        model = GPT(cfg.model_config(data.meta["vocab_size"]))
    if ckpt is None and cfg.finetune == "lora":  # freeze the model, train adapters on it
        targets = parse_targets(cfg.lora_targets)
        if cfg.lora_rank > max_rank(model, targets):
            raise UserError(f"lora_rank ({cfg.lora_rank}) is more than {max_rank(model, targets)}"
                            f", the smallest width of the layers it adapts in "
                            f"{cfg.init_from}: a higher rank adds parameters, not capacity; "
                            f"use --lora_rank={max_rank(model, targets)} or less (a small "
                            f"fraction of it is usual)")
        lora = lora_settings(model, pretrained, cfg.lora_rank, cfg.lora_alpha, targets)
        add_adapters(model, cfg.lora_rank, cfg.lora_alpha, targets, cfg.lora_dropout)
    model.to(device)
    kind = device.split(":")[0]
    optimizer = build_optimizer(
        model, cfg.optimizer, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        betas=(cfg.beta1, cfg.beta2), device_type=kind, muon_lr=cfg.muon_lr,
        muon_momentum=cfg.muon_momentum, embedding_lr=cfg.embedding_lr, head_lr=cfg.head_lr,
        ns_dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    scaler = torch.amp.GradScaler(kind) if dtype == "float16" else None
    state = TrainState(model, optimizer, scaler, config=cfg.to_dict(),
                       tokenizer=data.meta["tokenizer"], pretrained=pretrained, lora=lora)
    if ckpt is not None:
        state.restore(ckpt)
    return state


def start_model(name_or_path: str, cfg: TrainConfig, data: Dataset) -> GPT:
    """The weights a finetune starts from (GPT-2, or a nanogpt run) with cfg's runtime
    options, cropped to cfg.block_size; other shape keys are the weights' own."""
    model, tokenizer = load_weights(name_or_path, **cfg.runtime_options())
    if tokenizer is not None and tokenizer != data.meta["tokenizer"]:
        raise UserError(f"cannot start from {name_or_path}: it was trained on another "
                        f"tokenizer or vocabulary than dataset {cfg.dataset!r}")
    mc = model.config
    if tokenizer is None and mc.vocab_size != GPT2Tokenizer.vocab_size:
        raise UserError(f"{name_or_path} has vocab_size {mc.vocab_size}, not GPT-2's "
                        f"{GPT2Tokenizer.vocab_size}: it cannot train on GPT-2 BPE tokens")
    if cfg.block_size > mc.block_size:
        raise UserError(f"block_size {cfg.block_size} is longer than {name_or_path}'s "
                        f"{mc.block_size} positions; use --block_size={mc.block_size} or less")
    if cfg.block_size < mc.block_size:
        model.crop_block_size(cfg.block_size)
    log.info("initialized from %s: n_layer=%d n_head=%d n_embd=%d bias=%s (its own shape, "
             "not the config's)", name_or_path, mc.n_layer, mc.n_head, mc.n_embd, mc.bias)
    return model


def wrap_model(model: GPT, compiled: bool, dist: DistInfo, device: str) -> torch.nn.Module:
    """What runs forward: model, compiled when asked (device.resolve_compile), DDP-wrapped
    under torchrun. The plain model stays what is saved."""
    if compiled:
        log.info("compiling the model with torch.compile")
        model = torch.compile(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device] if device.startswith("cuda") else None)
    return model


def resolve_batch_split(cfg: TrainConfig, device: str) -> int:
    """cfg.batch_split, or for 0: on a CPU the fewest chunks of <= CPU_CHUNK_TOKENS (at
    least one sequence each), elsewhere 1."""
    if cfg.batch_split:
        return cfg.batch_split
    if not device.startswith("cpu"):
        return 1
    return min(cfg.batch_size, -(-cfg.batch_size * cfg.block_size // CPU_CHUNK_TOKENS))


# ---- what the user sees ----

def _trainable(model: GPT) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _log_start(cfg: TrainConfig, state: TrainState, resolved: dict, dist: DistInfo,
               resumed_from: Path | None, jlog: RunLog) -> None:
    log.info("config:\n%s\n  (resolved: device=%s dtype=%s compile=%s world_size=%d)",
             format_config(cfg), resolved["device"], resolved["dtype"], resolved["compile"],
             dist.world_size)
    log.info("tokens per iteration: %d (batch_size %d x block_size %d x grad accum %d x "
             "world size %d)", resolved["tokens_per_iter"], cfg.batch_size, cfg.block_size,
             cfg.gradient_accumulation_steps, dist.world_size)
    if resolved["batch_split"] > 1:
        log.info("each batch runs as %d chunks of about %d sequences (batch_split: less "
                 "memory, same update)", resolved["batch_split"],
                 round(cfg.batch_size / resolved["batch_split"]))
    log.info("number of parameters: %.2fM", resolved["params"] / 1e6)
    if state.lora:
        log.info("LoRA: rank %d, alpha %g on %s: %.2fM trainable parameters, the rest frozen "
                 "(base %s)", state.lora["rank"], state.lora["alpha"],
                 ", ".join(state.lora["targets"]), resolved["trainable_params"] / 1e6,
                 state.lora["base"])
    if resumed_from is not None:
        log.info("resuming from %s at iteration %d", resumed_from, state.iter_num)
        jlog.write(event="resume", iter=state.iter_num, checkpoint=str(resumed_from))


def _progress_bar(cfg: TrainConfig, start: int, dist: DistInfo):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_iters, initial=start, disable=not dist.is_master or None,
                dynamic_ncols=True, unit="it")


def _show_step(bar, record: dict) -> None:
    shown = dict(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                 gnorm=f"{record['grad_norm']:.2f}", tok_s=f"{record['tok_per_s']:,.0f}",
                 ep=f"{record['epochs']:.2f}")
    if "mfu" in record:
        shown["mfu"] = f"{100 * record['mfu']:.1f}%"
    bar.set_postfix(shown, refresh=False)
    if bar.disable:
        log.info("iter %d: loss %.4f, lr %.2e, grad norm %.2f, %.1f ms, %.0f tok/s, %s tokens "
                 "(%.2f epochs)%s", record["iter"], record["loss"], record["lr"],
                 record["grad_norm"], record["ms"], record["tok_per_s"],
                 f"{record['tokens']:,}", record["epochs"],
                 f", mfu {100 * record['mfu']:.1f}%" if "mfu" in record else "")
