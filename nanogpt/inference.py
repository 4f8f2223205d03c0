"""A GPT prepared for decoding: weights in the fastest precision the device has, and on a CPU
laid out for the one-row matmuls of token-by-token decoding.

Decoding one token reads every weight for a single row of activations, so its time goes to
matrix-vector products and to the fixed cost of each operation. What made it faster (baby GPT,
batch 1, 2-core AVX512-BF16 EPYC; README, Sampling):
- weights and activations in bf16 where the device has bf16 units: half the bytes to read;
  on AVX2 CPUs without them, one-row products in bf16 too (GemvLinear: torch's
  matrix-vector kernel converts in registers; a baby-GPT token 1.5x faster than float32 on a
  2-core AVX2-only EPYC), passes over several rows in float32;
- on a CPU, each Linear weight reordered once by oneDNN (torch's own CPU kernel library,
  as torch.compile's freezing does) into the blocked layout its matmul reads fastest
  (PACK_FOR_ROWS);
- on a CPU, a float32 KV cache: attention kernels ran faster over it than over a bf16 one;
- the forward written flat, with the activation and the residual adds fused into the packed
  matmuls (nanogpt.decode_step).
Decoding keeps torch's threads (one per core): on one thread it ran 15-20% slower there.
What did not pay: torch.compile of the decode step (inductor with frozen weights) took 25 s
to compile and then ran slower (5.8-6.5 ms per token against 2.1-2.5); fewer small
operations still (one KV-cache copy instead of two, fewer views) changed a token's time by
1-4%: what is left is mostly reading the weights and the keys from memory. On the AVX2-only
EPYC, one-row bf16 products through F.embedding_bag (fbgemm's kernel, the transposed weight
as its table, the input as per-row weights) ran 1.6x faster than F.linear on one weight held
in cache, but 0.72-0.98x on weights streamed from memory, and decoding with it was slower
(3.2-3.4 ms a token against 2.9-3.0).

bf16 changes the numbers: logits differ from float32 ones by about 1% (bf16 keeps 8 bits of
mantissa), so bf16 samples differ from float32 samples after a near-tie. dtype='float32' gives
float32 decoding. The prepared model is a copy for decoding only (eval mode, no gradients): it
never changes the model it was made from.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt import device
from nanogpt.device import PTDTYPE, resolve_decode_dtype
from nanogpt.lora import merge_adapters
from nanogpt.model import GPT

DECODE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def decode_dtype(model: GPT, requested: str = "auto", batch_size: int = 1) -> str:
    """'auto': the model's own dtype when that is not float32 (it was converted on purpose),
    else the fastest the device decodes batch_size rows in (device.resolve_decode_dtype: bf16
    on GPUs that have it, float16 on older GPUs; on a CPU bf16 where it has bf16 units, or for
    one row where its kernels are AVX2 (not AVX-512); float32 elsewhere). An explicit dtype is
    checked to work there."""
    if requested not in DECODE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DECODE_DTYPES)}, got {requested!r}")
    weight = next(model.parameters())
    if requested == "auto" and weight.dtype != torch.float32:
        return str(weight.dtype).removeprefix("torch.")
    return resolve_decode_dtype(requested, str(weight.device), batch_size)


def for_decoding(model: GPT, dtype: str = "auto", batch_size: int = 1) -> GPT:
    """model prepared for decoding batch_size rows at a time in dtype (see decode_dtype):
    model itself when it already is, else an eval-mode copy with weights in dtype, LoRA
    adapters merged into their weights and, on a CPU, Linear layers laid out for decoding
    (cpu_linear_kind)."""
    prepared = getattr(model, "prepared_for_decoding", None)
    if prepared is not None:
        if dtype in ("auto", prepared):
            return model
        raise ValueError(f"this model was prepared for decoding in {prepared}; to decode in "
                         f"{dtype}, pass the model it was made from")
    dtype = decode_dtype(model, dtype, batch_size)
    prepared = _copy_in(model, PTDTYPE[dtype])
    merge_adapters(prepared).requires_grad_(False)  # then decoded like any Linear below
    cpu_linear = cpu_linear_kind(PTDTYPE[dtype]) \
        if next(model.parameters()).device.type == "cpu" else None
    if cpu_linear is not None:
        for module in list(prepared.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear:  # the small head too: it ran faster packed
                    setattr(module, name, cpu_linear(child))
    prepared.eval()  # after the swaps: the new layers too
    prepared.prepared_for_decoding = dtype
    return prepared


def cpu_linear_kind(dtype: torch.dtype) -> type[nn.Module] | None:
    """What a CPU decodes each nn.Linear of dtype with: GemvLinear for bf16 where
    device.cpu_bf16_gemv (AVX2, no bf16 units), else PackedLinear where oneDNN packs dtype,
    else None (nn.Linear as it is)."""
    if dtype == torch.bfloat16 and device.cpu_bf16_gemv():
        return GemvLinear
    return PackedLinear if onednn_packing_works(dtype) else None


def _copy_in(model: GPT, dtype: torch.dtype) -> GPT:
    """A deep copy of model with its floating-point weights and buffers in dtype, made without
    a full-precision copy first; tied weights stay tied."""
    memo: dict[int, torch.Tensor] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point() and id(t) not in memo:
            converted = t.detach().to(dtype)
            memo[id(t)] = nn.Parameter(converted, False) if isinstance(t, nn.Parameter) \
                else converted
    return copy.deepcopy(model, memo)


def kv_cache_dtype(model: GPT) -> torch.dtype:
    """float32 on a CPU, whatever the weights: attention kernels over a float32 cache ran
    faster there than over a bf16 one, and keys and values keep all their bits; elsewhere the
    weights' dtype."""
    weight = next(model.parameters())
    return torch.float32 if weight.device.type == "cpu" else weight.dtype


PACK_FOR_ROWS = 16
"""The number of input rows oneDNN lays a packed weight out for. One row (what decoding
multiplies) picked a layout whose float32 matmuls ran 1.3x slower on one row than the one
chosen for 16 rows (2-core AVX512 EPYC; 25 matmuls of the baby GPT, 2.0 against 1.5 ms), and
1.2x slower on a 193-row prefill; in bf16, and with oneDNN held to AVX2, the two tied on one
row and 16 rows won the prefill."""


class PackedLinear(nn.Module):
    """An inference-only nn.Linear whose weight oneDNN has reordered for its own matmul.

    weight (dense) stays for code that reads it, e.g. an embedding tied to the head."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(),
                                                              PACK_FOR_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.default(x, self.packed, self.bias, "none",
                                                          [], "")


class GemvLinear(nn.Module):
    """An inference-only bf16 nn.Linear for an AVX2 CPU without bf16 units.

    One row of input (a decoded token) multiplies the bf16 weight through torch's
    matrix-vector kernel, which converts bf16 to float32 in registers: it reads half the bytes
    of float32 and has little fixed cost per call. Several rows (a prompt, a batch of samples,
    --no_cache) go through a float32 copy of the same weights, oneDNN-packed where it can:
    torch's bf16 matrix-matrix kernel there costs about one matrix-vector product per row
    (a 193-token prompt of the baby GPT: 263 ms against 49 in float32; 2-core AVX2 EPYC).
    Either way the input is bf16, products add up in float32 and the output is rounded to
    bf16, so the two differ only in the order of the float32 sums.

    The float32 copy is made at the first pass over several rows: decoding that never makes
    one (a one-token prompt, within the block) costs no time packing it and half the memory."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.bias32 = self.packed32 = self.weight32 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= GEMV_MAX_ROWS * x.size(-1):
            return F.linear(x, self.weight, self.bias)
        if self.packed32 is None and self.weight32 is None:
            self._make_float32_copy()
        if self.packed32 is None:
            y = F.linear(x.float(), self.weight32, self.bias32)
        else:
            y = torch.ops.mkldnn._linear_pointwise.default(x.float(), self.packed32,
                                                           self.bias32, "none", [], "")
        return y.to(x.dtype)

    def _make_float32_copy(self) -> None:
        weight = self.weight.detach().float()
        self.bias32 = None if self.bias is None else self.bias.detach().float()
        if onednn_packing_works(torch.float32):
            self.packed32 = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_FOR_ROWS)
        else:
            self.weight32 = weight


GEMV_MAX_ROWS = 1
"""Input rows up to which GemvLinear multiplies in bf16."""


_PACKING_WORKS: dict[torch.dtype, bool] = {}
_FUSION_WORKS: dict[torch.dtype, bool] = {}


def onednn_packing_works(dtype: torch.dtype) -> bool:
    """Whether this torch has oneDNN's packed linear for dtype on the CPU and it computes what
    F.linear does (checked once on a small matrix)."""
    if dtype not in _PACKING_WORKS:
        _PACKING_WORKS[dtype] = _onednn_check(dtype, fused=False)
    return _PACKING_WORKS[dtype]


def onednn_fusion_works(dtype: torch.dtype) -> bool:
    """Whether the packed linear also takes the post-ops nanogpt.decode_step fuses into it
    (GELU, ReLU, a residual add) and they compute what the unfused ops do (checked once)."""
    if dtype not in _FUSION_WORKS:
        _FUSION_WORKS[dtype] = onednn_packing_works(dtype) and _onednn_check(dtype, fused=True)
    return _FUSION_WORKS[dtype]


def _onednn_check(dtype: torch.dtype, fused: bool) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48, device="meta")  # filled from gen: the global RNG stays put
    for name in ("weight", "bias"):
        shape = getattr(linear, name).shape
        setattr(linear, name, nn.Parameter(torch.randn(shape, generator=gen).to(dtype), False))
    x = torch.randn(3, 2, 64, generator=gen).to(dtype)
    residual = torch.randn(3, 2, 48, generator=gen).to(dtype)
    op, b = torch.ops.mkldnn._linear_pointwise, linear.bias
    try:
        with torch.no_grad():
            packed = PackedLinear(linear)
            plain = F.linear(x, linear.weight, b)
            pairs = [(packed(x), plain)]
            if fused:
                w = packed.packed
                pairs = [(op(x, w, b, "gelu", [], "none"), F.gelu(plain)),
                         (op(x, w, b, "gelu", [], "tanh"), F.gelu(plain, approximate="tanh")),
                         (op(x, w, b, "relu", [], ""), F.relu(plain)),
                         (op.binary(x, residual, w, b, "add"), residual + plain)]
    except (AttributeError, RuntimeError, NotImplementedError):  # no such op, or no kernel
        return False
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    scale = plain.float().abs().max().item()
    return all(got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=tol,
                                                          atol=tol * scale)
               for got, want in pairs)
