"""Peak FLOP/s of a device, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch

from nanogpt.device import PTDTYPE

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


def training_flops_per_token(model) -> int:
    """A GPT's training FLOPs per token, frozen weights (LoRA) included: the forward (2 per
    weight) and the input gradient (2 more) run through every weight, the weight gradient
    (2 more) only through trainable ones. With nothing frozen: GPT.flops_per_token()."""
    frozen = sum(p.numel() for name, p in model.named_parameters()
                 if not p.requires_grad and not name.endswith("wpe.weight"))
    return model.flops_per_token() - 2 * frozen


def peak_flops(device: str, dtype: str) -> float | None:
    """The device's peak for MFU: the GPU table on CUDA, None elsewhere (measure instead)."""
    if device.startswith("cuda"):
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    return None
