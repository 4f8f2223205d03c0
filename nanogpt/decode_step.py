"""GPT.forward for sampling, written flat: the computation of nanogpt.model's modules over a
KV cache, as one loop over the layers' weights instead of a tree of module calls.

Decoding one token of a small GPT is about 80 small operations, and on a CPU the time between
them (Python, module calls, views) was a third of the token. Here each layer is a few fields
read once (norms, matmuls, its attention module for the attention path), and, where the
weights are oneDNN-packed (nanogpt.inference), the MLP's activation and each residual add run
inside the matmul before them (oneDNN post-ops, where this torch has them and they check out:
inference.onednn_fusion_works; one pass over the output instead of two).
Measured on the baby GPT, batch 1, bf16, 2-core AVX512-BF16 EPYC, side by side in three runs:
GPT.forward with a KV cache 3.4-4.1 ms per token, this 2.5-2.9 ms (1.3-1.4x; README,
Sampling).

Same function, same rounding where nothing is fused: the layers do what Block does, in its
order. A fused post-op rounds once where the modules round twice, so in bf16 logits move by
bf16 rounding (about 1%); in float32 by about 1e-6. Both the cached and the uncached sampling
paths (nanogpt.sampling) run this, so they agree as before. GPT.forward stays the reference:
tests check this against it for every architecture switch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.modules.module as _module
from torch.nn import functional as F

from nanogpt.inference import PackedLinear, kv_cache_dtype, onednn_fusion_works
from nanogpt.model import (
    GPT,
    MLP,
    Block,
    CausalSelfAttention,
    KVCache,
    LayerNorm,
    ReLU2,
    RMSNorm,
    apply_rope,
    rms_norm,
    soft_cap,
)

log = logging.getLogger("nanogpt")

Step = Callable[[torch.Tensor, list[KVCache], int], torch.Tensor]
Fn = Callable[[torch.Tensor], torch.Tensor]
AddFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input, residual) -> output


def decode_step(model: GPT) -> Step:
    """(idx, caches, start_pos) -> next-token logits (B, V) for model in eval mode: DecodeStep
    when it computes what model's forward computes, else model's forward itself.

    A model whose classes were subclassed or swapped, or whose code was edited (a changed
    model.py), decodes through its own forward: checked on two rows of a few tokens, by
    comparing the two paths' logits to the rounding of the model's dtype (a flat step that
    cannot even run on the model counts as disagreeing). A change that shows only past those
    tokens, or below that rounding, is not caught: sampling then runs this module's GPT, not
    yours. The check (tens of milliseconds: most of a short generation's time) runs once per
    process for each _code_key: a later change to what the key holds (a patched method) is
    checked again; a model with hooks or a method set on a module is checked every time.
    """
    key = _code_key(model)
    same = _VERDICTS.get(key)  # None: not asked yet, or no key
    flat, settled = None, True  # settled: an answer to keep (not a passing failure)
    try:
        if same is not False and _is_library_gpt(model):
            flat = DecodeStep(model)
            if same is None:
                settled = False
                same = _agrees(model, flat)
                settled = True
    except Exception:  # noqa: BLE001 -- e.g. an edited module lost a field this reads
        same = False
    same = bool(same and flat is not None)
    if key is not None and settled:
        if len(_VERDICTS) >= 64:
            _VERDICTS.clear()
        _VERDICTS[key] = same
    if not same:
        log.info("sampling: this model's forward is not nanogpt's (changed or subclassed); "
                 "decoding through it, without the flat decode step")
        return forward_step(model)
    return flat


def forward_step(model: GPT) -> Step:
    """The Step of model's own forward."""
    def step(idx: torch.Tensor, caches: list[KVCache], start_pos: int = 0) -> torch.Tensor:
        logits, _ = model(idx, kv_caches=caches, start_pos=start_pos)
        return logits[:, -1, :]
    return step


_VERDICTS: dict[tuple, bool] = {}
"""_code_key -> whether DecodeStep computes what the model's forward does."""


def _code_key(model: GPT) -> tuple | None:
    """What the flat step's agreement with model's forward depends on, but for the weights:
    each module's class, the functions in that class as they are now (a patched method is
    another function), the module's plain settings (n_head, eps, approximate, ...),
    nanogpt.model's functions and classes, the config, and the parameters' dtypes and device.
    The key holds these objects, so none of them is freed and its id reused. None (check every
    time) where that is not the whole story: a module with forward hooks (or global ones), a
    callable set on a module itself (its own forward, say; a key holding it would also keep
    each prepared copy alive), or anything that cannot be part of a key."""
    import nanogpt.model as model_module  # this module's own imports are bound at import

    settings = (int, float, str, bool)  # not None: GemvLinear's float32 copy, made later
    try:
        modules = list(model.modules())
        if any(m._forward_hooks or m._forward_pre_hooks for m in modules) or \
                _module._global_forward_hooks or _module._global_forward_pre_hooks or \
                any(callable(v) for m in modules for v in vars(m).values()):
            return None
        classes = tuple(dict.fromkeys(type(m) for m in modules))
        key = (tuple(type(m) for m in modules),
               tuple(tuple(v for v in vars(c).values() if callable(v)) for c in classes),
               tuple(tuple((k, v) for k, v in vars(m).items() if isinstance(v, settings))
                     for m in modules),
               tuple(v for v in vars(model_module).values() if callable(v)),
               tuple(sorted(vars(model.config).items())),
               tuple(sorted({(str(t.dtype), t.device.type) for t in model.parameters()})))
        hash(key)
    except Exception:  # noqa: BLE001 -- an unusual model (a config without __dict__, ...)
        return None
    return key


def _is_library_gpt(model: GPT) -> bool:
    kinds = [(model, GPT)] + [(b, Block) for b in model.transformer.h] \
        + [(b.attn, CausalSelfAttention) for b in model.transformer.h] \
        + [(b.mlp, MLP) for b in model.transformer.h]
    return all(type(module) is kind for module, kind in kinds)


@torch.no_grad()
def _agrees(model: GPT, flat: Step) -> bool:
    """Whether flat gives model's logits for two rows: a prefill of up to 15 tokens, then one
    decoded token."""
    cfg = model.config
    weight = model.lm_head.weight
    n = min(16, cfg.block_size)
    pos = torch.arange(2 * n, device=weight.device)
    idx = (pos * 7 + pos // n * 3).remainder(cfg.vocab_size).view(2, n)  # two different rows
    logits = []
    for step in (forward_step(model), flat):
        caches = model.make_kv_caches(2, kv_cache_dtype(model))
        first = [step(idx[:, :n - 1], caches, 0)] if n > 1 else []
        logits.append(torch.cat(first + [step(idx[:, n - 1:], caches, n - 1)]).float())
    want, got = logits
    tol = 1e-4 if weight.dtype == torch.float32 else 5e-2  # fused ops round differently
    return bool((got - want).abs().max() <= tol * max(1.0, want.abs().max().item()))


class DecodeStep:
    """logits of the next token for a prepared GPT (nanogpt.inference.for_decoding, or any
    GPT in eval mode), filling its KV caches. Reads the model's weights, never changes them."""

    def __init__(self, model: GPT):
        cfg = model.config
        self.config = cfg
        self.wte = model.transformer.wte.weight
        self.wpe = model.transformer.wpe.weight if cfg.positions == "learned" else None
        self.rope = (model.rope_cos, model.rope_sin) if cfg.positions == "rope" else None
        self.layers = [_Layer(block) for block in model.transformer.h]
        self.norm_f = _norm(model.transformer.ln_f)
        self.head = _linear(model.lm_head)
        self.softcap = cfg.logit_softcap

    def __call__(self, idx: torch.Tensor, caches: list[KVCache], start_pos: int = 0,
                 ) -> torch.Tensor:
        """idx (B, T): the tokens at positions start_pos.. of the window, which caches hold
        up to start_pos -> logits (B, V) of the token after the last one."""
        B, T = idx.size()
        end = start_pos + T
        block_size = self.config.block_size
        if end > block_size:
            raise ValueError(f"cannot decode {end} positions: block_size is {block_size}")
        rows = padded_rows(T, block_size - start_pos) if idx.device.type == "cpu" else T
        if rows > T:  # token 0 after the real ones: causal attention hides them from those
            idx = F.pad(idx, (0, rows - T))
        x = F.embedding(idx, self.wte)  # (B, rows, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe[start_pos:start_pos + rows]
        else:
            rope = (self.rope[0][start_pos:start_pos + rows],
                    self.rope[1][start_pos:start_pos + rows])
        path = None  # the attention path: every layer has the same shapes, so the same path
        for layer, cache in zip(self.layers, caches):
            x, path = layer(x, cache, rope, path)
        if rows > T:  # the padding's keys and values are not part of the context
            for cache in caches:
                cache.length = end
        return soft_cap(self.head(self.norm_f(x[:, T - 1, :])), self.softcap)  # (B, V)


def padded_rows(T: int, room: int) -> int:
    """How many rows a T-token pass computes on a CPU (at most room): T rounded up to a
    multiple of 16 (of 64 past 256 tokens, of 256 past 1024).

    oneDNN keeps what it builds for a matmul, per number of rows, in two caches of 1,024
    entries (ideep's and oneDNN's own; capping both with LRU_CACHE_CAPACITY and
    ONEDNN_PRIMITIVE_CACHE_CAPACITY removed the growth). Prompts of every length, or --no_cache
    decoding (one pass per token over a growing window), made one entry per length: for the
    baby GPT, sample.py --no_cache over 300 tokens peaked at 918 MiB RSS, 419 MiB padded
    (389 MiB with the cache). Padded, a 256-token block has 16 lengths. One row (a decoded
    token) is never padded, and up to 16 rows cost about one in a matmul. The real rows'
    logits move by the rounding of another kernel (1.4e-6 in float32, one bf16 step in bf16).
    """
    if T <= 1:
        return T
    step = 16 if T <= 256 else 64 if T <= 1024 else 256
    return min(-(-T // step) * step, max(room, T))


class _Layer:
    """One Block: x + attn(norm_1(x)), then + mlp(norm_2(x))."""

    def __init__(self, block: nn.Module):
        attn = block.attn
        self.attn, self.n_head, self.qk_norm = attn, attn.n_head, attn.qk_norm
        self.norm_1, self.norm_2 = _norm(block.ln_1), _norm(block.ln_2)
        self.qkv = _linear(attn.c_attn)
        self.proj_add = _linear_add(attn.c_proj)
        self.fc_act = _linear(block.mlp.c_fc, block.mlp.gelu)
        self.fc2_add = _linear_add(block.mlp.c_proj)

    def __call__(self, x: torch.Tensor, cache: KVCache,
                 rope: tuple[torch.Tensor, torch.Tensor] | None, path: str | None,
                 ) -> tuple[torch.Tensor, str]:
        B, T, C = x.size()
        # (B, T, 3C) -> (B, T, 3, H, D) -> (B, H, 3, T, D): q, k, v (B, H, T, D) as views
        qkv = self.qkv(self.norm_1(x)).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.transpose(1, 3).unbind(2)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k, v = cache.update(k, v)
        qk = q.to(k.dtype)  # the cache may hold keys wider than the weights (CPU decoding)
        path = path or self.attn.path(qk, k)
        y = self.attn.attend(path, qk, k, v).to(q.dtype)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        x = self.proj_add(y, x)
        return self.fc2_add(self.fc_act(self.norm_2(x)), x), path


def _norm(module: nn.Module) -> Fn:
    if type(module) is LayerNorm:
        shape, weight, bias = module.weight.shape, module.weight, module.bias
        return lambda x: F.layer_norm(x, shape, weight, bias, 1e-5)
    return rms_norm if type(module) is RMSNorm else module


def _linear(module: nn.Module, activation: nn.Module | None = None) -> Fn:
    """x -> activation(module(x)); one oneDNN call when module is packed."""
    if type(module) is PackedLinear:  # oneDNN's op: looked up here, where torch has it
        _linear_pointwise = torch.ops.mkldnn._linear_pointwise
        packed, bias = module.packed, module.bias
        if onednn_fusion_works(module.weight.dtype):
            if type(activation) is nn.GELU:  # erf or tanh GELU, as the module's approximate
                algorithm = activation.approximate
                return lambda x: _linear_pointwise(x, packed, bias, "gelu", [], algorithm)
            if type(activation) is ReLU2:  # the relu in the matmul, then the square
                return lambda x: _linear_pointwise(x, packed, bias, "relu", [], "").square()
        linear: Fn = lambda x: _linear_pointwise(x, packed, bias, "none", [], "")  # noqa: E731
    elif type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        linear = lambda x: F.linear(x, weight, bias)  # noqa: E731
    else:  # a LoRA adapter or another layer: its own forward
        linear = module
    if activation is None:
        return linear
    return lambda x: activation(linear(x))


def _linear_add(module: nn.Module) -> AddFn:
    """(x, residual) -> residual + module(x); one oneDNN call when module is packed."""
    if type(module) is PackedLinear and onednn_fusion_works(module.weight.dtype):
        packed, bias = module.packed, module.bias
        fused_add = torch.ops.mkldnn._linear_pointwise.binary
        return lambda x, residual: fused_add(x, residual, packed, bias, "add")
    linear = _linear(module)
    return lambda x, residual: residual + linear(x)
