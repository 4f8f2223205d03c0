"""LoRA: finetune a GPT through small low-rank adapters while its weights stay frozen.

A targeted Linear layer y = x W^T + b gets two trainable matrices, A (rank, in) and
B (out, rank): y = x W^T + b + s * (drop(x) A^T) B^T, with s = alpha / rank (Hu et al., 2021).
B starts at zero, so an adapted model starts as its base. Only A and B train: the base
weights get no gradients and no optimizer state, so the backward pass skips their weight
gradients and a checkpoint holds only the adapters (with the base's name and a hash of its
weights). merge_adapters folds s * B A into W, giving a plain GPT again.

The adapted layers keep their weight and bias under the same names (`...attn.c_attn.weight`)
and add `lora_A`, `lora_B` beside them, so the base's state_dict still loads by name.
"""

from __future__ import annotations

import hashlib
import math
import typing

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt.dropout import Dropout
from nanogpt.model import GPT

Finetune = typing.Literal["full", "lora"]
TARGETS = {"c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "c_fc": "mlp.c_fc",
           "mlp.c_proj": "mlp.c_proj"}
"""The layers an adapter may go on (name in lora_targets -> module path inside a block)."""
DEFAULT_TARGETS = "c_attn,attn.c_proj,c_fc,mlp.c_proj"
ADAPTER_NAMES = ("lora_A", "lora_B")


def parse_targets(text: str) -> list[str]:
    """'c_attn,mlp.c_proj' -> ['c_attn', 'mlp.c_proj']; ValueError naming a bad entry."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"lora_targets names no layer; use some of {', '.join(TARGETS)}")
    for name in names:
        if name not in TARGETS:
            raise ValueError(f"lora_targets: unknown layer {name!r}; choose from "
                             f"{', '.join(TARGETS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"lora_targets names a layer twice: {text!r}")
    return names


class LoRALinear(nn.Module):
    """A frozen Linear (weight, bias) plus a trainable low-rank update s * B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 fast_dropout: bool = True):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters, still frozen
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft)
        self.scale = alpha / rank
        self.dropout = Dropout(dropout, fast_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A) * self.scale, self.lora_B)
        return F.linear(x, self.weight, self.bias) + update

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function: W + s * B A (made without drawing a
        random init)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        with torch.no_grad():
            delta = (self.lora_B.double() @ self.lora_A.double()) * self.scale
            linear.weight = nn.Parameter((self.weight.double() + delta).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear


def _targeted(model: GPT, targets: list[str]) -> list[tuple[nn.Module, str, str]]:
    """(parent module, attribute, full name) of every layer the targets name, block by block."""
    found = []
    for i, block in enumerate(model.transformer.h):
        for target in targets:
            parent_path, attr = TARGETS[target].rsplit(".", 1)
            parent = block.get_submodule(parent_path)
            found.append((parent, attr, f"transformer.h.{i}.{TARGETS[target]}"))
    return found


def max_rank(model: GPT, targets: list[str]) -> int:
    """The highest useful lora_rank on these targets: the smallest side of any targeted
    layer (past it, B A has no more rank to give, only more parameters)."""
    return min(min(layer.in_features, layer.out_features)
               for layer in (getattr(parent, attr) for parent, attr, _ in
                             _targeted(model, targets)))


def add_adapters(model: GPT, rank: int, alpha: float, targets: list[str],
                 dropout: float = 0.0) -> GPT:
    """Freeze every weight of model and put a fresh adapter (A random, B zero) on each
    targeted layer; returns model. A is drawn from torch's global RNG."""
    if rank < 1:
        raise ValueError(f"lora_rank must be >= 1, got {rank}")
    model.requires_grad_(False)
    fast = model.config.fast_dropout
    for parent, attr, _ in _targeted(model, targets):
        layer = getattr(parent, attr)
        if isinstance(layer, LoRALinear):
            raise ValueError("the model has adapters already")
        setattr(parent, attr, LoRALinear(layer, rank, alpha, dropout, fast))
    return model


def has_adapters(model: torch.nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The adapters' tensors (what a LoRA checkpoint holds of the model)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(ADAPTER_NAMES)}


def load_adapters(model: GPT, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapters into model's; ValueError unless they are exactly model's."""
    ours = adapter_state_dict(model)
    if state.keys() != ours.keys():
        missing, unexpected = sorted(ours.keys() - state.keys()), sorted(state.keys() - ours.keys())
        raise ValueError(f"the adapters do not fit this model: missing {missing[:2] or 'none'}, "
                         f"unexpected {unexpected[:2] or 'none'}")
    for key, tensor in state.items():
        if tensor.shape != ours[key].shape:
            raise ValueError(f"adapter {key} has shape {tuple(tensor.shape)}, the model's "
                             f"has {tuple(ours[key].shape)}: another lora_rank")
    with torch.no_grad():
        for key, tensor in state.items():
            ours[key].copy_(tensor)


def merge_adapters(model: GPT) -> GPT:
    """Fold every adapter into its layer (W + s * B A), in place: a plain GPT, all of whose
    weights train again. Returns model."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    model.requires_grad_(True)
    return model


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a state_dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()

