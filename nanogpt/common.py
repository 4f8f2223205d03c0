"""Device, dtype and autocast choice; seeding and RNG state; torch.distributed set-up."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from nanogpt.errors import UserError

PTDTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(requested: str) -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device is checked to exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = requested.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {requested!r} requested but CUDA is not available "
                            f"(torch.cuda.is_available() is False); use --device=cpu")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {requested!r} requested but only "
                            f"{torch.cuda.device_count()} CUDA device(s) exist")
    if kind == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but MPS is not available; use --device=cpu")
    return requested


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    NANOGPT_CPU_BF16=1 or =0 overrides the answer: to run as on the other kind of CPU (e.g.
    the test suite under both dtypes on one machine)."""
    forced = os.environ.get("NANOGPT_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_num_threads(requested: int = 0) -> int | None:
    """CPU threads for torch: `requested` when > 0; None (leave torch alone) when
    OMP_NUM_THREADS or MKL_NUM_THREADS is set, since torch already honours them; else
    torch's default (one per physical core) capped by the CPUs this process may run on,
    which torch does not look at (taskset, container CPU sets)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None
    return max(1, min(torch.get_num_threads(), allowed))


def resolve_dtype(requested: str, device: str) -> str:
    """'auto' -> bf16 on CUDA that has it (else fp16), bf16 on CPUs with bf16 matrix units,
    float32 elsewhere. An explicit choice is checked to work on the device."""
    kind = device.split(":")[0]
    if requested == "auto":
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if kind == "cpu" and cpu_has_fast_bf16():
            return "bfloat16"
        return "float32"
    if requested == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("dtype 'bfloat16' is not supported on this GPU; use --dtype=float16")
    if requested == "float16" and kind == "cpu":
        raise UserError("dtype 'float16' is not supported for training on CPU; "
                        "use --dtype=bfloat16 or --dtype=float32")
    return requested


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision context for the forward pass (nothing to do for float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=PTDTYPE[dtype])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seed(*numbers: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), so nearby inputs differ."""
    h = 0x9E3779B97F4A7C15
    for n in numbers:
        h = (h ^ (n & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h >> 1


def seed_micro_step(seed: int, step: int, micro_step: int) -> None:
    """Seed torch's RNG (dropout) from the run seed and the global micro-step alone.

    Nothing random then depends on which rank runs a micro-step or on RNG state carried
    between steps: a resume, and the same run on any number of ranks, draw the same masks.
    """
    torch.manual_seed(mix_seed(seed, step, micro_step))


def get_rng_state() -> dict:
    """Every RNG the training step may draw from, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- torch.distributed (torchrun) ----

@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Rank and world size as torchrun sets them (a plain run is rank 0 of 1)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ["WORLD_SIZE"]))


def init_distributed(info: DistInfo, device: str) -> str:
    """Join the process group (nccl on CUDA, gloo on CPU); return this rank's device."""
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return device


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- peak FLOP/s, for MFU ----

# Dense bf16/fp16 tensor-core peaks, FLOP/s, by substring of torch.cuda.get_device_name().
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L4": 121e12, "A10G": 125e12, "A10": 125e12, "RTX 4090": 165e12,
    "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def gpu_peak_flops(device_name: str, dtype: str) -> float | None:
    """Peak FLOP/s of a GPU by name for bf16/fp16 (fp32 runs on TF32 cores at half that)."""
    for key, peak in GPU_PEAK_FLOPS.items():
        if key in device_name:
            return peak if dtype in ("bfloat16", "float16") else peak / 2
    return None


def measure_matmul_flops(dtype: str = "float32", n: int = 1024, device: str = "cpu",
                         repeats: int = 10) -> float:
    """Achieved FLOP/s of an n x n matmul in dtype on device: a measured peak for MFU."""
    import time

    a = torch.randn(n, n, device=device, dtype=PTDTYPE[dtype])
    b = torch.randn(n, n, device=device, dtype=PTDTYPE[dtype])
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: str, dtype: str) -> float | None:
    """The device's peak for MFU: the GPU table on CUDA, None elsewhere (measure instead)."""
    if device.startswith("cuda"):
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    return None
