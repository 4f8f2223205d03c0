"""The GPT model: a GPT-2 style decoder-only transformer in one file.

Parameter names follow OpenAI's GPT-2 (`transformer.wte`, `h.N.attn.c_attn`, `lm_head`, ...)
so that GPT-2 weights load by name. Shape letters: B batch, T time, C channels (n_embd),
H heads, D head size, V vocabulary.

The default GPTConfig is GPT-2 exactly. Switches turn on the modern recipe of nanochat and
modded-nanogpt, one at a time: rotary positions, RMSNorm without weights, QK-norm, ReLU^2,
an untied head, a tanh soft-cap on the logits, zero-initialised output projections.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from nanogpt.dropout import Dropout

Attention = typing.Literal["auto", "flash", "manual", "bmm"]
ATTENTION_IMPLS = typing.get_args(Attention)
Positions = typing.Literal["learned", "rope"]
Norm = typing.Literal["layernorm", "rmsnorm"]
Activation = typing.Literal["gelu", "relu2"]
RUNTIME_FIELDS = ("dropout", "attention", "fast_dropout", "activation_checkpointing")
"""GPTConfig fields that do not change the weights: a saved model may load with others."""


@dataclass
class GPTConfig:
    block_size: int = 1024
    """Longest context the model sees (number of learned positions)."""
    vocab_size: int = 50304
    """Number of token ids (GPT-2's 50257 padded up to a multiple of 64)."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    """Biases in Linear and LayerNorm layers (GPT-2 has them; False is a bit faster)."""
    attention: Attention = "auto"
    """How attention is computed (the same function each way): 'flash' (torch's fused
    scaled_dot_product_attention), 'manual' (the masked softmax written out, for reading),
    'bmm' (manual with scores and mask in one batched matmul: fast on CPUs) or 'auto'."""
    gelu_approximate: str = "none"
    """MLP activation: 'none' (exact erf GELU) or 'tanh' (OpenAI GPT-2's approximation)."""
    fast_dropout: bool = True
    """On the CPU, draw dropout masks 16 bits at a time (nanogpt.dropout); False: torch's."""
    activation_checkpointing: bool = False
    """Keep only each block's input in training and rerun the block in backward (with the
    same dropout masks): much less activation memory for up to 1.3x the step time."""
    # the modern recipe: each switch off (GPT-2) by default
    positions: Positions = "learned"
    """'learned' (GPT-2's wpe table) or 'rope' (rotary embeddings applied to q and k)."""
    norm: Norm = "layernorm"
    """'layernorm' (GPT-2, with weights) or 'rmsnorm' (x / rms(x), no weights)."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before attention (steadier at high lr)."""
    activation: Activation = "gelu"
    """MLP activation: 'gelu' (GPT-2) or 'relu2' (relu(x) squared)."""
    tie_embeddings: bool = True
    """lm_head shares the token embedding matrix (GPT-2); False gives the head its own."""
    logit_softcap: float = 0.0
    """> 0: logits become softcap * tanh(logits / softcap), bounded in (-softcap, softcap)."""
    zero_init: bool = False
    """Start the residual output projections (and an untied head) at zero: each block
    begins as the identity."""

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got "
                             f"{self.gelu_approximate!r}")
        for name, kind in (("positions", Positions), ("norm", Norm), ("activation", Activation)):
            if getattr(self, name) not in typing.get_args(kind):
                raise ValueError(f"{name} must be one of {typing.get_args(kind)}, got "
                                 f"{getattr(self, name)!r}")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"positions='rope' needs an even head size, but n_embd / n_head "
                             f"is {self.n_embd // self.n_head}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap must be >= 0 (0: off), got {self.logit_softcap}")

    def with_runtime(self, **changes: object) -> "GPTConfig":
        """A copy with other RUNTIME_FIELDS values; ValueError for any other field."""
        unknown = set(changes) - set(RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"only {', '.join(RUNTIME_FIELDS)} may differ from a saved "
                             f"model, not {', '.join(sorted(unknown))}")
        return replace(self, **changes)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's LayerNorm has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) over the last dimension, with no weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    if hasattr(F, "rms_norm"):  # torch >= 2.4: one fused op
        return F.rms_norm(x, (x.size(-1),), eps=1e-6)
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm()
    return LayerNorm(config.n_embd, bias=config.bias)


def rope_tables(length: int, head_size: int, base: float = 10000.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_size / 2) of the rotation angles pos / base^(2i / head_size)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + D/2]) of x (B, H, T, D) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap) in float32, bounded in (-cap, cap); cap 0 leaves them as they
    are."""
    return cap * torch.tanh(logits.float() / cap) if cap > 0 else logits


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout, config.fast_dropout)
        self.resid_dropout = Dropout(config.dropout, config.fast_dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = config.attention
        self.fast_dropout = config.fast_dropout
        self.qk_norm = config.qk_norm
        self.plan: dict[str, str] = {}  # attention='auto' choices (GPT shares one among layers)

    def forward(self, x: torch.Tensor, kv_cache: "KVCache | None" = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, H, T, D)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:  # cos, sin (T, D / 2) of these T positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        qk = q.to(k.dtype)  # a KV cache may hold keys wider than the weights (CPU decoding)
        y = self.attend(self.path(qk, k), qk, k, v).to(q.dtype)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def attend(self, path: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of q (B, H, Tq, D) over k, v (B, H, Tk, D) along one path."""
        if path == "flash":
            return flash_attention(q, k, v, self.dropout if self.training else 0.0)
        if path == "bmm":
            return bmm_attention(q, k, v, self.attn_dropout)
        return self.manual_attention(q, k, v)

    def manual_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention written out: q (B, H, Tq, D) over k, v (B, H, Tk, D), Tk >= Tq.

        The queries are the last Tq of the Tk positions (a KV cache may hold the first ones).
        """
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, H, Tq, Tk) scores
        mask = _causal_mask(q.size(-2), k.size(-2), q.device)  # no looking at the future
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)  # each row: weights over the past, summing to 1
        att = self.attn_dropout(att)
        return att @ v  # (B, H, Tq, D) weighted sums of the values

    def path(self, q: torch.Tensor, k: torch.Tensor | None = None) -> str:
        """The attention path this layer takes for queries q over keys k: config.attention,
        or for 'auto' the fastest path for this device, dtype, phase and shape (measured once
        on a CPU, remembered in self.plan; see nanogpt.autotune)."""
        if self.attention != "auto":
            return self.attention
        from nanogpt.autotune import auto_path  # autotune imports model: import late

        return auto_path(self, q, q if k is None else k)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    dropout_p: float) -> torch.Tensor:
    """manual_attention through torch's fused kernel (it never materialises Tq x Tk)."""
    Tq, Tk = q.size(-2), k.size(-2)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if Tq == 1:  # one new token sees every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    mask = _causal_mask(Tq, Tk, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def bmm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  dropout: nn.Module) -> torch.Tensor:
    """manual_attention with the scores, their scale and the causal mask in one call:
    baddbmm(bias, q, k^T, alpha) = bias + alpha * q @ k^T on (B*H, Tq, Tk)."""
    att = torch.baddbmm(_causal_bias(q.size(-2), k.size(-2), q), q.flatten(0, 1),
                        k.flatten(0, 1).transpose(1, 2), alpha=1.0 / math.sqrt(k.size(-1)))
    att = dropout(F.softmax(att, dim=-1))
    return (att @ v.flatten(0, 1)).view_as(q)


def _causal_mask(Tq: int, Tk: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool mask, True where query i (at absolute position Tk - Tq + i) may look."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def _causal_bias(Tq: int, Tk: int, like: torch.Tensor) -> torch.Tensor:
    """(Tq, Tk) additive mask in like's dtype: 0 where _causal_mask allows, -inf elsewhere."""
    bias = torch.zeros(Tq, Tk, dtype=like.dtype, device=like.device)
    return bias.masked_fill_(~_causal_mask(Tq, Tk, like.device), float("-inf"))


class KVCache:
    """Preallocated keys and values of one attention layer, for incremental decoding.

    A plain object, not a module: the caches never enter a state_dict or the optimizer, and
    decoding reads them every token without nn.Module's attribute lookups. Slot i holds the
    token at position i of the current context window; when the window moves past block_size
    the caller resets and refills the cache (see nanogpt.sampling for the cropping rule).
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, n_head, max_len, head_size)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H, T, D); return every cached key and value so far."""
        start, T = self.length, k.size(2)
        end = start + T
        if end > self.k.size(2):
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.k.size(2)}")
        self.k.narrow(2, start, T).copy_(k)
        self.v.narrow(2, start, T).copy_(v)
        self.length = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)


class ReLU2(nn.Module):
    """relu(x)^2 (Primer; modded-nanogpt, nanochat)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = (ReLU2() if config.activation == "relu2"
                     else nn.GELU(approximate=config.gelu_approximate))
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout, config.fast_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, rope)
        return x + self.mlp(self.ln_2(x))


def _embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding; under torch.device("meta") (GPT.empty) without its default random
    init, which on the meta device imports torch._dynamo (about 1 s of a start-up)."""
    if torch.empty(0).is_meta:
        return nn.Embedding.from_pretrained(torch.empty(num, dim), freeze=False)
    return nn.Embedding(num, dim)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=_embedding(config.vocab_size, config.n_embd)))
        if config.positions == "learned":
            self.transformer.wpe = _embedding(config.block_size, config.n_embd)
        self.transformer.drop = Dropout(config.dropout, config.fast_dropout)
        self.transformer.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.transformer.ln_f = make_norm(config)
        self.attention_plan: dict[str, str] = {}  # attention='auto' choices; checkpoints keep it
        for block in self.transformer.h:
            block.attn.plan = self.attention_plan
        if config.positions == "rope":  # rotary: angle tables, not weights (never saved)
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        if self.lm_head.weight.is_meta:  # GPT.empty: weights are loaded next, none drawn
            return
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled down so the residual stream does not grow with
        # depth; zero_init: they start at zero, so each block starts as the identity
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init and not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)

    @classmethod
    def empty(cls, config: GPTConfig, device: torch.device | str = "cpu") -> "GPT":
        """A GPT of config with its weights left uninitialised, to load weights into right
        away: no random initialisation (1.5 s for GPT-2 124M on a 2-core CPU). Every weight
        must then be loaded: load_state_dict (strict) checks that."""
        with torch.device("meta"):
            model = cls(config)
        for module in model.modules():  # what to_empty does, without its 0.4 s import of sympy
            for name, t in [*module.named_parameters(recurse=False),
                            *module.named_buffers(recurse=False)]:
                empty = torch.empty(t.shape, dtype=t.dtype, device=device)
                setattr(module, name, nn.Parameter(empty, t.requires_grad)
                        if isinstance(t, nn.Parameter) else empty)
        if config.tie_embeddings:  # each module got its own tensor above: tie them again
            model.transformer.wte.weight = model.lm_head.weight
        if config.positions == "rope":  # computed, never saved: compute them again
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head)
            model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
        return model

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (as GPT-2 papers count).

        Tied token embeddings count once: they are shared with lm_head.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None, start_pos: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits, loss).

        With targets (B, T), logits are (B, T, V) and loss is the mean cross-entropy
        (targets of -1 are ignored). Without targets only the last position is computed:
        logits (B, 1, V), loss None. kv_caches / start_pos are for incremental decoding.
        """
        B, T = idx.size()
        if start_pos + T > self.config.block_size:
            raise ValueError(f"cannot forward {start_pos + T} positions: block_size is "
                             f"{self.config.block_size}")
        x, rope = self.transformer.wte(idx), None
        if self.config.positions == "learned":
            pos = torch.arange(start_pos, start_pos + T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)
        else:
            rope = (self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T])
        x = self.transformer.drop(x)
        # activation checkpointing: on a CPU the trainer's batch_split is the cheaper way to
        # bound memory; this is for when one chunk is still too big
        recompute = (self.config.activation_checkpointing and torch.is_grad_enabled()
                     and kv_caches is None)
        for i, block in enumerate(self.transformer.h):
            if recompute:  # keep only each block's input; rerun the block in backward
                x = checkpoint(block, x, None, rope, use_reentrant=False)
            else:
                x = block(x, kv_caches[i] if kv_caches is not None else None, rope)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.logits(x[:, -1:, :]), None  # a view: no copy
        logits = self.logits(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head: final hidden states (B, T, C) -> logits (B, T, V), soft-capped if asked."""
        return soft_cap(self.lm_head(x), self.config.logit_softcap)

    @classmethod
    def from_pretrained(cls, name_or_path: str, dropout: float | None = None,
                        **runtime: object) -> "GPT":
        """OpenAI GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' (downloaded
        with the `hf` extra) or a local Hugging Face GPT-2 directory. See nanogpt.pretrained.
        """
        from nanogpt.pretrained import (
            from_pretrained,  # pretrained imports model: import late
        )

        return from_pretrained(name_or_path, dropout=dropout, **runtime)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context length (e.g. to finetune GPT-2 at 256 instead of 1024)."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        else:
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]

    def configure_optimizers(self, weight_decay: float, learning_rate: float,
                             betas: tuple[float, float], device_type: str) -> torch.optim.AdamW:
        """AdamW that decays matrices and embeddings (dim >= 2) but not biases or norms."""
        from nanogpt.optim import adamw  # optim builds on the model: import late

        params = [p for p in self.parameters() if p.requires_grad]
        return adamw([{"params": [p for p in params if p.dim() >= 2],
                       "weight_decay": weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                     learning_rate, betas, device_type)

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls plus 12*L*C*T for attention (PaLM)."""
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def estimate_mfu(self, tokens_per_iter: int, seconds_per_iter: float,
                     peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over peak_flops.

        peak_flops comes from nanogpt.flops.peak_flops(device, dtype) or a measurement.
        """
        return self.flops_per_token() * tokens_per_iter / seconds_per_iter / peak_flops

    def make_kv_caches(self, batch_size: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> list[KVCache]:
        """One preallocated KVCache per layer, sized for block_size positions.

        dtype defaults to the dtype keys are computed in: the autocast dtype inside
        torch.autocast, else the weights' dtype.
        """
        cfg = self.config
        ref = self.lm_head.weight[:1, :1]
        dtype = dtype or (ref @ ref).dtype  # a 1x1 matmul reports autocast's dtype, if any
        return [KVCache(batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head,
                        dtype, device or ref.device) for _ in range(cfg.n_layer)]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 context_shift: int | None = None, dtype: str = "auto") -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T) and return (B, T + new).

        temperature 0 is greedy. dtype 'auto' decodes in bf16 where the device decodes
        faster in it (else float32) on a copy of the model. See nanogpt.sampling for streaming,
        stop strings and context_shift (how the context is cropped past block_size).
        """
        from nanogpt.sampling import (
            generate_tokens,  # sampling imports model: import late
        )

        new = list(generate_tokens(self, idx, max_new_tokens, temperature=temperature,
                                   top_k=top_k, top_p=top_p, generator=generator,
                                   use_cache=use_cache, context_shift=context_shift,
                                   dtype=dtype))
        if not new:
            return idx
        return torch.cat([idx] + [t.view(-1, 1) for t in new], dim=1)
