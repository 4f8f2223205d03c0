"""The training loop: train(cfg) and the small pieces it is built from."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanogpt import common
from nanogpt.checkpoint import (
    LAST_NAME,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    newest_checkpoint,
    save_checkpoint,
    save_run_config,
)
from nanogpt.config import TrainConfig, format_config
from nanogpt.data import (
    BatchSampler,
    GPT2Tokenizer,
    ensure_dataset,
    load_meta,
)
from nanogpt.errors import TrainingStopped, UserError
from nanogpt.model import GPT, GPTConfig

log = logging.getLogger("nanogpt")

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
# batch_split=0 on a CPU: chunks of at most this many tokens. On the baby GPT (batch 64 x block
# 256, 2 cores) 8 chunks of 2048 tokens made a step 1.4-1.5x faster than one chunk (less memory
# traffic) and cut the peak RSS from 5.3 GB to 1.4 GB; 4 chunks: as fast, 2.3 GB.
CPU_CHUNK_TOKENS = 2048


class TrainingDiverged(UserError):
    pass


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup (never 0 at step 0), cosine decay to min_lr, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def resolve_batch_split(cfg: TrainConfig, device: str) -> int:
    """cfg.batch_split, or for 0: on a CPU the fewest chunks of <= CPU_CHUNK_TOKENS (at
    least one sequence each), elsewhere 1."""
    if cfg.batch_split:
        return cfg.batch_split
    if not device.startswith("cpu"):
        return 1
    return min(cfg.batch_size, -(-cfg.batch_size * cfg.block_size // CPU_CHUNK_TOKENS))


def batch_chunks(x: torch.Tensor, y: torch.Tensor, chunks: int):
    """(x, y, weight) for `chunks` near-equal slices of a batch; weight = slice / batch size,
    so the weighted mean of the slices' mean losses is the batch's mean loss."""
    for xc, yc in zip(x.tensor_split(chunks), y.tensor_split(chunks)):
        yield xc, yc, xc.size(0) / x.size(0)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, samplers: dict[str, BatchSampler], eval_iters: int,
                  ctx, dist: common.DistInfo, batch_split: int = 1) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches per split, shared out among the ranks.

    Eval batches come from their own seeded stream: they never move the training stream or
    the global RNG, and every eval sees the same batches, so evals compare like with like.
    Rank r takes batches r, r + world_size, ...: any world size averages the same batches.
    Pass the unwrapped model: evaluation needs no gradient sync. Each batch runs as
    batch_split chunks (see TrainConfig.batch_split).
    """
    was_training = model.training
    model.eval()
    out = {}
    for split, sampler in samplers.items():
        total = torch.zeros((), device=sampler.device)
        for k in range(dist.rank, eval_iters, dist.world_size):
            x, y = sampler.get_batch(k)
            for xc, yc, weight in batch_chunks(x, y, batch_split):
                with ctx:
                    _, loss = model(xc, yc)
                total += loss.float() * weight
        if dist.enabled:
            torch.distributed.all_reduce(total)  # SUM: gloo has no AVG
        out[split] = (total / eval_iters).item()
    model.train(was_training)
    return out


class GracefulStop:
    """First SIGINT/SIGTERM sets `signum` (training saves and stops after the current step);
    a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing this step and saving a checkpoint "
                    "(Ctrl-C again to abort at once)", signal.Signals(signum).name)


@dataclass
class TrainResult:
    iter_num: int
    best_val_loss: float
    out_dir: str
    losses: dict[str, float] = field(default_factory=dict)


class JsonlLog:
    """Machine-readable log: one JSON object per line in out_dir/log.jsonl (rank 0 only)."""

    def __init__(self, path: Path | None, append: bool):
        self.file = open(path, "a" if append else "w", encoding="utf-8") if path else None

    def write(self, **record) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


@dataclass
class Run:
    """Everything train() resolves before the first step."""

    cfg: TrainConfig
    dist: common.DistInfo
    device: str
    dtype: str
    compile: bool
    tokenizer_meta: dict
    vocab_size: int
    train_sampler: BatchSampler
    eval_samplers: dict[str, BatchSampler]
    ckpt: dict | None = None
    ckpt_source: Path | None = None
    """The file ckpt was read from, when resuming."""
    started: float = field(default_factory=time.time)
    """Unix time the run was set up; log records carry `elapsed`, the seconds since then."""
    pretrained: str | None = None
    """The GPT-2 name or directory the weights started from (kept across resumes)."""
    batch_split: int = 1
    """Chunks each micro-batch runs as (cfg.batch_split resolved for the device)."""

    @property
    def ckpt_path(self) -> Path:
        return checkpoint_path(self.cfg.out_dir)

    @property
    def tokens_per_iter(self) -> int:
        cfg = self.cfg
        return (cfg.gradient_accumulation_steps * self.dist.world_size * cfg.batch_size
                * cfg.block_size)


def prepare_run(cfg: TrainConfig, dist: common.DistInfo) -> Run:
    """Resolve device, dtype, data and checkpoint; raise UserError before touching out_dir."""
    device = common.resolve_device(cfg.device)
    dtype = common.resolve_dtype(cfg.dtype, device)
    use_compile = cfg.compile == "True" or (cfg.compile == "auto" and device.startswith("cuda"))
    ddir = _ensure_dataset_once(cfg, dist, device)
    meta = load_meta(ddir)
    if cfg.vocab_size is not None and cfg.vocab_size != meta["vocab_size"]:
        raise UserError(f"vocab_size {cfg.vocab_size} does not match the dataset's "
                        f"{meta['vocab_size']} ({ddir / 'meta.json'}); drop --vocab_size")
    pretrained = None if cfg.init_from in ("scratch", "resume") else cfg.init_from
    if pretrained is not None:
        _check_gpt2_dataset(cfg, meta, ddir)
    samplers = {}
    for i, split in enumerate(("train", "val")):
        samplers[split] = BatchSampler(str(ddir / f"{split}.bin"), cfg.block_size,
                                       cfg.batch_size, cfg.seed + 1 + i, device,
                                       meta.get("dtype", "uint16"))
    train_sampler = BatchSampler(samplers["train"].path, cfg.block_size, cfg.batch_size,
                                 cfg.seed, device, samplers["train"].dtype)
    ckpt_file = checkpoint_path(cfg.out_dir)
    ckpt, source = None, None
    if cfg.init_from == "resume":
        source = newest_checkpoint(cfg.out_dir)
        if source is None:
            raise UserError(f"init_from=resume but there is no checkpoint at {ckpt_file}; "
                            f"check --out_dir or start with --init_from=scratch")
        ckpt = load_checkpoint(source)
        _check_same_shape(ckpt, cfg, meta["vocab_size"])
        if ckpt.get("tokenizer") != meta["tokenizer"]:
            raise UserError(f"cannot resume: dataset {cfg.dataset!r} uses another tokenizer or "
                            f"vocabulary than the checkpoint {source}; pass the --dataset it "
                            f"was trained on")
        pretrained = ckpt.get("pretrained")
    elif newest_checkpoint(cfg.out_dir) is not None and not cfg.overwrite:
        raise UserError(f"{newest_checkpoint(cfg.out_dir)} already exists; resume it with "
                        f"--init_from=resume, choose another --out_dir, or pass --overwrite "
                        f"to replace it")
    return Run(cfg, dist, device, dtype, use_compile, meta["tokenizer"], meta["vocab_size"],
               train_sampler, samplers, ckpt, source, pretrained=pretrained,
               batch_split=resolve_batch_split(cfg, device))


def _check_gpt2_dataset(cfg: TrainConfig, meta: dict, ddir: Path) -> None:
    kind = meta["tokenizer"].get("kind")
    if kind != "gpt2":
        raise UserError(f"init_from={cfg.init_from} needs a dataset tokenized with GPT-2 BPE, "
                        f"but {ddir} uses the {kind!r} tokenizer; run python data/prepare.py "
                        f"--input YOUR_TEXT --tokenizer gpt2 --out {Path(cfg.data_dir) / 'NAME'}"
                        f" and pass --dataset NAME")


def _ensure_dataset_once(cfg: TrainConfig, dist: common.DistInfo, device: str) -> Path:
    """Rank 0 prepares the dataset while the other ranks wait; then every rank reads it.

    The wait is a broadcast of rank 0's outcome, so a failed preparation ends every rank
    with an error instead of leaving the others waiting on files that never come.
    """
    if not dist.enabled:
        return ensure_dataset(cfg.data_dir, cfg.dataset)
    ddir, error = Path(cfg.data_dir) / cfg.dataset, None
    if dist.is_master:
        try:
            ensure_dataset(cfg.data_dir, cfg.dataset)
        except Exception as e:  # noqa: BLE001 - re-raised below, once the others know
            error = e
    failed = torch.tensor([int(error is not None)], device=device)
    torch.distributed.broadcast(failed, src=0)
    if error is not None:
        raise error
    if failed.item():
        raise UserError(f"rank 0 could not prepare dataset {cfg.dataset!r}; see its error")
    if not (ddir / "meta.json").is_file():
        raise UserError(f"rank {dist.rank} finds no dataset at {ddir} (rank 0 prepared "
                        f"it): prepare it at the same path on every node, or share the disk")
    return ddir


def _check_same_shape(ckpt: dict, cfg: TrainConfig, vocab_size: int) -> None:
    saved = ckpt["model_args"]
    wanted = {k: getattr(cfg, k) for k in SHAPE_KEYS}
    wanted["vocab_size"] = cfg.vocab_size or vocab_size
    # a finetuned GPT-2 has GPT-2's shape whatever n_layer etc. say, as when it started
    keys = ("block_size", "vocab_size") if ckpt.get("pretrained") else SHAPE_KEYS
    diff = [f"{k}={wanted[k]!r} (checkpoint has {saved[k]!r})" for k in keys
            if saved.get(k) != wanted[k]]
    if diff:
        raise UserError("cannot resume: the model shape differs from the checkpoint: "
                        + ", ".join(diff) + "; use the checkpoint's values")


def build_model(run: Run) -> GPT:
    cfg = run.cfg
    if run.ckpt is not None:
        model = model_from_checkpoint(run.ckpt, dropout=cfg.dropout, attention=cfg.attention,
                                      fast_dropout=cfg.fast_dropout)
    elif run.pretrained is not None:
        model = pretrained_model(run.pretrained, cfg)
    else:
        model = GPT(GPTConfig(block_size=cfg.block_size,
                              vocab_size=cfg.vocab_size or run.vocab_size,
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                              dropout=cfg.dropout, bias=cfg.bias, attention=cfg.attention,
                              fast_dropout=cfg.fast_dropout))
    return model.to(run.device)


def pretrained_model(name_or_path: str, cfg: TrainConfig) -> GPT:
    """GPT-2 weights with cfg's dropout, cropped to cfg.block_size; other shape keys ignored."""
    model = GPT.from_pretrained(name_or_path, dropout=cfg.dropout, attention=cfg.attention,
                                fast_dropout=cfg.fast_dropout)
    mc = model.config
    if mc.vocab_size != GPT2Tokenizer.vocab_size:
        raise UserError(f"{name_or_path} has vocab_size {mc.vocab_size}, not GPT-2's "
                        f"{GPT2Tokenizer.vocab_size}: it cannot train on GPT-2 BPE tokens")
    if cfg.block_size > mc.block_size:
        raise UserError(f"block_size {cfg.block_size} is longer than {name_or_path}'s "
                        f"{mc.block_size} positions; use --block_size={mc.block_size} or less")
    if cfg.block_size < mc.block_size:
        model.crop_block_size(cfg.block_size)
    log.info("initialized from %s: n_layer=%d n_head=%d n_embd=%d bias=True (its own shape, "
             "not the config's)", name_or_path, mc.n_layer, mc.n_head, mc.n_embd)
    return model


@dataclass
class Stepper:
    """The model, optimizer and settings of a run: step(iter_num) is one optimizer step."""

    run: Run
    raw_model: GPT  # the plain module: what is saved and clipped
    model: torch.nn.Module  # what runs forward: maybe compiled, maybe DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None

    @property
    def eval_model(self) -> torch.nn.Module:  # compiled, not DDP-wrapped: no gradient sync
        return self.model.module if self.run.dist.enabled else self.model

    def step(self, iter_num: int) -> tuple[float, float]:
        """Accumulate gradients over the micro-batches of iter_num, clip, update.

        Each micro-batch runs as run.batch_split chunks, each loss weighted by its share of
        the batch: without dropout the gradient is the whole batch's (up to float rounding);
        with dropout each chunk draws its own masks, so it is the same only in distribution.
        Returns (loss averaged over micro-batches and ranks, learning rate). A non-finite
        loss, or gradient norm (other than an fp16 overflow the GradScaler skips), raises
        TrainingDiverged before the weights change.
        """
        cfg, dist, run = self.run.cfg, self.run.dist, self.run
        lr = get_lr(iter_num, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum, split, scaler = cfg.gradient_accumulation_steps, run.batch_split, self.scaler
        ctx = common.autocast(run.device, run.dtype)
        loss_sum = torch.zeros((), device=run.device)
        for micro in range(accum):
            global_micro = micro * dist.world_size + dist.rank
            x, y = run.train_sampler.get_batch(iter_num, global_micro)
            common.seed_micro_step(cfg.seed, iter_num, global_micro)
            for chunk, (xc, yc, weight) in enumerate(batch_chunks(x, y, split)):
                sync = not dist.enabled or (micro == accum - 1 and chunk == split - 1)
                with (contextlib.nullcontext() if sync else self.model.no_sync()):
                    with ctx:
                        _, loss = self.model(xc, yc)
                        loss = loss * (weight / accum)
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach()
        if scaler:
            scaler.unscale_(self.optimizer)
        # with grad_clip 0 the norm is still measured (clipping at inf changes nothing)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                   cfg.grad_clip or float("inf")).item()
        lossf = _mean_over_ranks(loss_sum, dist).item()  # the same on every rank
        if not math.isfinite(lossf) or (not math.isfinite(grad_norm) and scaler is None):
            what = f"loss is {lossf}" if not math.isfinite(lossf) else \
                f"gradient norm is {grad_norm}"
            raise TrainingDiverged(f"{what} at iter {iter_num}; training stopped before the "
                                   f"update")
        if scaler:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lossf, lr


def build_stepper(run: Run) -> tuple[Stepper, int, float]:
    """Model, optimizer and GradScaler for run, restored from its checkpoint when resuming.

    Returns (stepper, first iteration, best val loss so far).
    """
    cfg, dist = run.cfg, run.dist
    common.seed_everything(cfg.seed)
    raw_model = build_model(run)
    raw_model.recompute_blocks = cfg.activation_checkpointing
    kind = run.device.split(":")[0]
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate,
                                               (cfg.beta1, cfg.beta2), kind)
    scaler = torch.amp.GradScaler(kind) if run.dtype == "float16" else None
    iter_num, best_val_loss = 0, float("inf")
    if run.ckpt is not None:
        optimizer.load_state_dict(run.ckpt["optimizer"])
        if scaler is not None and run.ckpt.get("scaler"):
            scaler.load_state_dict(run.ckpt["scaler"])
        iter_num, best_val_loss = run.ckpt["iter_num"], run.ckpt["best_val_loss"]
        common.set_rng_state(run.ckpt["rng"])
        run.started -= run.ckpt.get("elapsed", 0.0)  # elapsed counts on across resumes
        run.ckpt = None  # free the memory
    model: torch.nn.Module = raw_model
    if run.compile:
        log.info("compiling the model with torch.compile")
        model = torch.compile(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[run.device] if run.device.startswith("cuda") else None)
    return Stepper(run, raw_model, model, optimizer, scaler), iter_num, best_val_loss


def make_checkpoint(stepper: Stepper, iter_num: int, best_val_loss: float) -> dict:
    run, raw_model = stepper.run, stepper.raw_model
    return {
        "model": raw_model.state_dict(),
        "optimizer": stepper.optimizer.state_dict(),
        "scaler": stepper.scaler.state_dict() if stepper.scaler is not None else None,
        "model_args": {k: getattr(raw_model.config, k) for k in GPTConfig.__dataclass_fields__},
        "config": run.cfg.to_dict(),
        "tokenizer": run.tokenizer_meta,
        "pretrained": run.pretrained,
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "elapsed": time.time() - run.started,
        "rng": common.get_rng_state(),
    }


def all_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def train(cfg: TrainConfig, dist: common.DistInfo | None = None) -> TrainResult:
    """Train a GPT as cfg says. User mistakes raise UserError before out_dir is touched."""
    dist = dist or common.DistInfo()
    threads = common.default_num_threads(cfg.num_threads)
    if threads:
        torch.set_num_threads(threads)
    run = prepare_run(cfg, dist)
    log.info("config:\n%s\n  (resolved: device=%s dtype=%s compile=%s world_size=%d)",
             format_config(cfg), run.device, run.dtype, run.compile, dist.world_size)
    log.info("tokens per iteration: %d (batch_size %d x block_size %d x grad accum %d x "
             "world size %d)", run.tokens_per_iter, cfg.batch_size, cfg.block_size,
             cfg.gradient_accumulation_steps, dist.world_size)
    if run.batch_split > 1:
        log.info("each batch runs as %d chunks of about %d sequences (batch_split: less "
                 "memory, same update)", run.batch_split,
                 round(cfg.batch_size / run.batch_split))
    resumed_from = run.ckpt_source
    stepper, iter_num, best_val_loss = build_stepper(run)
    log.info("number of parameters: %.2fM", stepper.raw_model.get_num_params() / 1e6)
    if dist.is_master:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.pt.tmp-*"):  # left by a save that was killed
            stale.unlink(missing_ok=True)
        if cfg.init_from != "resume":
            (out / LAST_NAME).unlink(missing_ok=True)  # an older run's; --overwrite was given
        save_run_config(cfg.out_dir, cfg.to_dict())
    jlog = JsonlLog(Path(cfg.out_dir) / "log.jsonl" if dist.is_master else None,
                    append=cfg.init_from == "resume")
    if resumed_from is not None:
        log.info("resuming from %s at iteration %d", resumed_from, iter_num)
        jlog.write(event="resume", iter=iter_num, checkpoint=str(resumed_from))
    try:
        with GracefulStop() as stop:
            return _loop(stepper, iter_num, best_val_loss, jlog, stop)
    finally:
        jlog.close()


def _loop(stepper: Stepper, iter_num: int, best_val_loss: float, jlog: JsonlLog,
          stop: GracefulStop) -> TrainResult:
    run = stepper.run
    cfg, dist = run.cfg, run.dist
    peak = common.peak_flops(run.device, run.dtype)
    losses: dict[str, float] = {}
    last_good = "none yet"

    def save(path: Path, reason: str) -> None:
        nonlocal last_good
        if not dist.is_master:
            return
        if not all_finite(stepper.raw_model):
            raise TrainingDiverged(f"refusing to save non-finite weights at iter {iter_num}")
        save_checkpoint(path, make_checkpoint(stepper, iter_num, best_val_loss))
        last_good = f"{path} (iter {iter_num})"
        jlog.write(event="checkpoint", iter=iter_num, reason=reason, path=str(path))

    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.max_iters, initial=iter_num, disable=not dist.is_master or None,
               dynamic_ncols=True, unit="it")
    try:
        t_last = time.perf_counter()
        while True:
            if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
                losses = estimate_loss(stepper.eval_model, run.eval_samplers, cfg.eval_iters,
                                       common.autocast(run.device, run.dtype), dist,
                                       run.batch_split)
                log.info("step %d: train loss %.4f, val loss %.4f", iter_num, losses["train"],
                         losses["val"])
                jlog.write(event="eval", iter=iter_num, train_loss=losses["train"],
                           val_loss=losses["val"], time=time.time(),
                           elapsed=time.time() - run.started)
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])
                if iter_num > 0 and (improved or cfg.always_save_checkpoint) \
                        and not cfg.eval_only:
                    save(run.ckpt_path, "eval")
                t_last = time.perf_counter()  # do not count eval time in the step time
            if iter_num >= cfg.max_iters or cfg.eval_only:
                break

            try:
                lossf, lr = stepper.step(iter_num)
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e}; last good checkpoint: {last_good}") from None
            iter_num += 1

            now = time.perf_counter()
            dt, t_last = now - t_last, now
            bar.update(1)
            if iter_num % cfg.log_interval == 0 and dist.is_master:
                tok_s = run.tokens_per_iter / dt
                record = dict(event="train", iter=iter_num - 1, loss=lossf, lr=lr,
                              ms=dt * 1000, tok_per_s=tok_s,
                              elapsed=time.time() - run.started)
                if peak:
                    record["mfu"] = stepper.raw_model.estimate_mfu(run.tokens_per_iter, dt, peak)
                jlog.write(**record)
                bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                                refresh=False)
                if bar.disable:
                    log.info("iter %d: loss %.4f, lr %.2e, %.1f ms, %.0f tok/s", iter_num - 1,
                             lossf, lr, dt * 1000, tok_s)
            if _should_stop(stop, dist, run.device):
                raise _stop_and_save(stop, run, save, iter_num)
    finally:
        bar.close()
    return TrainResult(iter_num, best_val_loss, cfg.out_dir, losses)


def _stop_and_save(stop: GracefulStop, run: Run, save, iter_num: int) -> TrainingStopped:
    """Save where the signal stopped us; return the exception that ends the run.

    With always_save_checkpoint=False, ckpt.pt is the best-val model and must stay so: the
    stopped state goes to last.pt, which --init_from=resume takes when it is the newer file.
    """
    path = run.ckpt_path if run.cfg.always_save_checkpoint else run.ckpt_path.with_name(LAST_NAME)
    save(path, "signal")
    signum = stop.signum or signal.SIGTERM
    return TrainingStopped(f"stopped by {signal.Signals(signum).name}: checkpoint saved to "
                           f"{path} at iter {iter_num}; resume with the same command plus "
                           f"--init_from=resume", 128 + signum)


def _mean_over_ranks(value: torch.Tensor, dist: common.DistInfo) -> torch.Tensor:
    if dist.enabled:
        torch.distributed.all_reduce(value)  # SUM: gloo has no AVG
        value = value / dist.world_size
    return value


def _should_stop(stop: GracefulStop, dist: common.DistInfo, device: str) -> bool:
    """Every rank must stop at the same step, or the others would wait in a collective."""
    if not dist.enabled:
        return stop.signum is not None
    flag = torch.tensor([stop.signum or 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item() and stop.signum is None:
        stop.signum = int(flag.item())
    return bool(flag.item())
