"""Which device, which precision, how many CPU threads, whether torch.compile can work."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import sysconfig
import typing

import torch

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt")

DType = typing.Literal["auto", "float32", "bfloat16", "float16"]
PTDTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


def resolve_device(requested: str) -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device is checked to exist."""
    try:
        check_device_name(requested)
    except ValueError as e:
        raise UserError(str(e)) from None
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


def check_device_name(device: str) -> None:
    """ValueError unless device is auto, cpu, cuda, cuda:N or mps."""
    kind, _, index = device.partition(":")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps; got {device!r}")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    NANOGPT_CPU_BF16=1 or =0 overrides the answer: to run as on the other kind of CPU (e.g.
    the test suite under both dtypes on one machine)."""
    forced = os.environ.get("NANOGPT_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(_cpu_bf16_flags())


@functools.cache
def _cpu_bf16_flags() -> frozenset[str]:
    """The bf16 flags of /proc/cpuinfo, read once per process: every generate call asks, a
    read took 56 us on 2 cores, and the file grows with the number of cores."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return frozenset()
    return frozenset(words & {"amx_bf16", "avx512_bf16"})


CPU_BF16_GEMV_CAPABILITIES = ("AVX2",)
"""torch's CPU kernels (torch.backends.cpu.get_cpu_capability()) under which a one-row bf16
product runs torch's own matrix-vector kernel, which converts bf16 to float32 in vector
registers: it reads half the bytes of a float32 one and runs faster where the weights come
from memory (decoding). Not AVX512: on AVX-512 CPUs without bf16 units torch hands bf16
products to oneDNN's bf16 emulation instead, which nobody has measured here."""
BF16_GEMV_MIN_TORCH = "2.13"
"""The torch measured with that kernel (x86 got it in 2.6, pytorch#139208; older torch runs a
generic bf16 loop, unmeasured): older torch keeps float32 decoding."""


def cpu_bf16_gemv() -> bool:
    """True on a CPU without bf16 units where one-row bf16 products are fast (AVX2 kernels,
    torch >= BF16_GEMV_MIN_TORCH): decoding there is bf16 through inference.GemvLinear."""
    return (not cpu_has_fast_bf16()
            and torch.backends.cpu.get_cpu_capability() in CPU_BF16_GEMV_CAPABILITIES
            and torch.torch_version.TorchVersion(torch.__version__) >= BF16_GEMV_MIN_TORCH)


def cpu_decodes_bf16_faster(batch_size: int = 1) -> bool:
    """True when decoding batch_size rows at a time runs faster in bf16 than in float32 on
    this CPU: where it has bf16 units (cpu_has_fast_bf16), and for one row where
    cpu_bf16_gemv. On a 2-core AVX2-only EPYC, a baby-GPT decode step took 3.0 ms in bf16
    against 4.5-5.9 in float32 with oneDNN-packed weights (README, Sampling); several rows
    multiply in float32 there anyway (inference.GemvLinear), so bf16 only adds casts and
    slower bf16 element-wise ops (sample.py's 10 samples: 0.84x). Elsewhere (AVX-512 without
    bf16 units, ARM, older x86, older torch) float32: unmeasured there."""
    return cpu_has_fast_bf16() or (batch_size == 1 and cpu_bf16_gemv())


def resolve_dtype(requested: str, device: str, purpose: str = "training") -> str:
    """'auto' -> bf16 on CUDA that has it (else fp16), bf16 on CPUs with bf16 matrix units,
    float32 elsewhere. An explicit choice is checked to work on the device (for purpose, as
    the error says)."""
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
        raise UserError(f"dtype 'float16' is not supported for {purpose} on CPU; "
                        "use --dtype=bfloat16 or --dtype=float32")
    return requested


def resolve_decode_dtype(requested: str, device: str, batch_size: int = 1) -> str:
    """resolve_dtype for decoding batch_size rows at a time: on a CPU, 'auto' is bf16 wherever
    that runs faster (cpu_decodes_bf16_faster), which includes CPUs whose training 'auto' is
    float32."""
    if requested == "auto" and device.split(":")[0] == "cpu" and \
            cpu_decodes_bf16_faster(batch_size):
        return "bfloat16"
    return resolve_dtype(requested, device, "sampling")


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision context for the forward pass (nothing to do for float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=PTDTYPE[dtype])


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


def set_num_threads(requested: int = 0) -> None:
    """Set torch's CPU threads (default_num_threads); UserError for more threads than the
    machine has CPUs (more only slow torch down, and tens of thousands crash OpenMP)."""
    cpus = os.cpu_count()
    if cpus and requested > cpus:
        raise UserError(f"num_threads ({requested}) is more than the {cpus} CPUs of this "
                        f"machine; use --num_threads={cpus} or less, or 0 for one per "
                        f"physical core")
    threads = default_num_threads(requested)
    if threads:
        torch.set_num_threads(threads)


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot work on device here, or None. Cheap: it looks for what
    compiling needs (Dynamo for this Python; on a GPU, Triton for its kind and a C compiler
    for Triton's launchers; on a CPU, the C++ compiler Inductor calls) and compiles nothing."""
    try:
        import torch._dynamo
    except Exception as e:  # noqa: BLE001 - a broken install raises anything
        return f"torch._dynamo does not import ({type(e).__name__}: {e})"
    if not torch._dynamo.is_dynamo_supported():
        return (f"torch {torch.__version__} cannot compile on Python "
                f"{sys.version_info.major}.{sys.version_info.minor}")
    kind = device.split(":")[0]
    if kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed, or does not support this GPU"
        if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
            return "Triton needs a C compiler (gcc or clang, or set CC) and none was found"
        include = sysconfig.get_paths().get("include") or ""
        if not os.path.isfile(os.path.join(include, "Python.h")):  # its launchers include it
            return (f"Triton compiles against Python's C headers and {include}/Python.h is "
                    f"missing (install your Python's development package, e.g. "
                    f"python{sys.version_info.major}.{sys.version_info.minor}-dev)")
    elif kind == "cpu":
        cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
        if not shutil.which(cxx):
            return f"Inductor needs the C++ compiler {cxx!r} (or set CXX) and it was not found"
    return None


def resolve_compile(setting: bool | str, device: str) -> bool:
    """Whether to torch.compile: True compiles (a UserError now if it cannot work here, rather
    than a failure mid-run); 'auto' compiles on CUDA when it can work, else warns once and
    runs eager."""
    if setting is False or (setting == "auto" and not device.startswith("cuda")):
        return False
    problem = compile_problem(device)
    if problem is None:
        return True
    if setting is True:
        raise UserError(f"compile=True, but torch.compile cannot work here: {problem}; "
                        f"fix that or use --compile=False")
    log.warning("compile=auto: %s; training without torch.compile", problem)
    return False
