"""Dropout that is cheap on the CPU.

torch's CPU dropout draws one Mersenne Twister number per element and keeps a float32 mask
for backward: on the baby GPT (6x384, batch 64, block 256, dropout 0.2) that is about a fifth
of a training step and 4 bytes per element held until backward. Here one 64-bit draw from the
same generator gives four 16-bit uniform numbers, an element is kept where its number clears a
threshold, and the mask is held as bool: about 4x faster, a quarter of the memory.

The drop probability is rounded to a multiple of 1/65536 (0.2 becomes 0.199997) and kept
values are scaled by the exact inverse of the rounded keep probability, so the expected output
still equals the input. Masks come from torch's default generator, so torch.manual_seed makes
them repeatable. Other devices use torch's dropout (Philox, fused), which is already fast.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

_LEVELS = 1 << 16  # the 16-bit numbers run over [-_LEVELS / 2, _LEVELS / 2)


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool tensor of shape, each element True (kept) with probability 1 - round(p, 1/65536)."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-2**63, None, generator=generator)  # every int64 value, uniformly
    numbers = words.view(torch.int16)[:n].view(shape)
    return numbers >= round(p * _LEVELS) - _LEVELS // 2


def keep_scale(p: float) -> float:
    """What kept elements are multiplied by: 1 / the rounded keep probability."""
    return _LEVELS / (_LEVELS - round(p * _LEVELS))


class _MaskedScale(torch.autograd.Function):
    """x * mask * scale, keeping only the bool mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return (x * mask).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True, fast: bool = True) -> torch.Tensor:
    """F.dropout, but with the cheap masks above for CPU tensors when fast is True."""
    if not training or p == 0.0:
        return x
    if not fast or x.device.type != "cpu" or round(p * _LEVELS) >= _LEVELS:
        return F.dropout(x, p, training=True)
    return _MaskedScale.apply(x, keep_mask(tuple(x.shape), p, x.device), keep_scale(p))


class Dropout(nn.Module):
    """nn.Dropout with the cheap CPU masks of this module (fast=False: torch's own)."""

    def __init__(self, p: float, fast: bool = True):
        super().__init__()
        self.p = p
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.p}, fast={self.fast}"
