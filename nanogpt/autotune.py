"""attention='auto': the fastest attention path for this device, dtype, phase and shape.

The attention paths of nanogpt.model compute the same function, but which is fastest on a CPU
depends on the machine, the dtype, the shape and the phase: on a 2-core AVX512-BF16 EPYC, 'bmm'
trained the CPU configs in bf16 about twice as fast as torch's fused kernel ('flash'), while
in float32 they were within a few percent, and one-token decoding favours 'flash' (README,
Performance). Other CPUs (AMX, for one) may rank them otherwise. So on a CPU, 'auto' times the
candidate paths on a layer's real inputs the first time a (dtype, phase, shape) comes up (a
few milliseconds, up to about a second for big shapes) and keeps the fastest. Phases:

    train    forward and backward (the inputs require grad)
    eval     forward over whole sequences without grad (evaluation; a first prefill)
    prefill  several new tokens into a KV cache that holds earlier ones
    decode   one new token
    (+dropout when the layer drops attention weights: other work)

The paths agree only to float rounding, so a choice, once made, stays: it is kept in the
model's attention_plan (which training checkpoints save and a resume restores) and for the
rest of the process (every model and run in it takes the same paths). Measuring never draws
from torch's random generators.

Without measuring, the rule takes 'flash', or 'bmm' when training with nanogpt's CPU dropout
(the fused kernel's CPU fallback draws torch's slower masks). The rule decides in float32
(where the paths were within a few percent; MEASURED_DTYPES), on other devices (on GPUs the
fused kernel wins), under torch.compile, under torch.distributed (every rank must take the
same path) and for attention too small to time or to matter (MIN_WORK).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from nanogpt.model import CausalSelfAttention

log = logging.getLogger("nanogpt")

CANDIDATES = ("flash", "bmm", "manual")
MEASURED_DTYPES = (torch.bfloat16, torch.float16)
"""float32 takes the rule: the fused kernel was the fastest or within 5% in every phase and
CPU config measured, so the choice does not need timing, and runs stay the same run to run."""
MIN_WORK = 1 << 19
"""Multiply-adds of q @ k^T (B * H * Tq * Tk * D) below which the rule decides unmeasured."""
MARGIN = 1.1
"""The rule's path stays unless another is more than 10% faster: timings jitter."""
BUDGET_S = 0.05
"""About how long the timed rounds of one measurement take (3 rounds at least)."""

clock = time.perf_counter  # tests replace it with a fake clock
_measured: dict[str, str] = {}  # key -> path, for the whole process


def auto_path(layer: CausalSelfAttention, q: torch.Tensor, k: torch.Tensor) -> str:
    """The path 'auto' takes for layer on queries q (B, H, Tq, D) over keys k (B, H, Tk, D)."""
    phase = phase_of(layer, q, k)
    B, H, Tq, D = q.shape
    Tk = k.size(-2)
    if not phase.startswith("train"):  # sampling's lengths grow: measure a handful of times
        Tq, Tk = _round_up(Tq), _round_up(Tk)
    key = f"{q.device.type}/{str(q.dtype).removeprefix('torch.')}/{phase}/{B}x{H}x{Tq}x{Tk}x{D}"
    path = layer.plan.get(key)
    if path is None:
        worth = B * H * Tq * Tk * D >= MIN_WORK and measurable(q)
        path = _measured_path(layer, q, k, phase, key) if worth else rule(layer, q, phase)
        layer.plan[key] = path
    return path


def phase_of(layer: CausalSelfAttention, q: torch.Tensor, k: torch.Tensor) -> str:
    if q.requires_grad:
        phase = "train"
    elif q.size(-2) == 1:
        phase = "decode"
    elif k.size(-2) > q.size(-2):
        phase = "prefill"
    else:
        phase = "eval"
    if layer.training and layer.dropout > 0:
        phase += "+dropout"  # not the same work: masks to draw
    return phase


def _round_up(n: int) -> int:
    return 1 << (n - 1).bit_length()


def rule(layer: CausalSelfAttention, q: torch.Tensor, phase: str) -> str:
    if phase == "train+dropout" and layer.fast_dropout and q.device.type == "cpu":
        return "bmm"
    return "flash"


def measurable(q: torch.Tensor) -> bool:
    """In a MEASURED_DTYPES dtype on a CPU, outside torch.compile, in a single process."""
    if q.device.type != "cpu" or q.dtype not in MEASURED_DTYPES:
        return False
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    distributed = (torch.distributed.is_available() and torch.distributed.is_initialized()
                   and torch.distributed.get_world_size() > 1)
    return not compiling and not distributed


def _measured_path(layer: CausalSelfAttention, q: torch.Tensor, k: torch.Tensor, phase: str,
                   key: str) -> str:
    if key not in _measured:
        seconds = measure(layer, q, k, train=phase.startswith("train"))
        _measured[key] = pick(seconds, rule(layer, q, phase))
        log.info("attention=auto: %s for %s (%s)", _measured[key], key,
                 ", ".join(f"{p} {1000 * s:.2f} ms" for p, s in seconds.items()))
    return _measured[key]


def pick(seconds: dict[str, float], default: str) -> str:
    """The fastest path, unless the default is within MARGIN of it."""
    fastest = min(seconds, key=seconds.get)
    return default if seconds[default] <= MARGIN * seconds[fastest] else fastest


def measure(layer: CausalSelfAttention, q: torch.Tensor, k: torch.Tensor,
            train: bool) -> dict[str, float]:
    """Median seconds of one call of each candidate path of layer on q and k (k doubles as
    the values), with the backward pass when train. Rounds take turns among the paths, so
    a change of machine load hits them alike."""

    def once(path: str) -> float:
        qq, kk, vv = (t.detach().requires_grad_(train) for t in (q, k, k))
        start = clock()
        y = layer.attend(path, qq, kk, vv)
        if train:
            y.backward(torch.ones_like(y))
        return clock() - start

    with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(train):
        warm = sum(once(path) for path in CANDIDATES)  # first calls set up kernels
        rounds = max(3, min(20, int(BUDGET_S / max(warm, 1e-9))))
        times = {path: [] for path in CANDIDATES}
        for _ in range(rounds):
            for path in CANDIDATES:
                times[path].append(once(path))
    return {path: statistics.median(t) for path, t in times.items()}
