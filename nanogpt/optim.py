"""Optimizers: AdamW (nanoGPT's), and Muon for the hidden matrices with AdamW for the rest.

Muon (Keller Jordan, 2024; used by modded-nanogpt and nanochat) keeps SGD momentum for each
2-D weight matrix and replaces the update by the nearest semi-orthogonal matrix: all its
singular values set to about 1, found by a few Newton-Schulz iterations. Every direction of
the matrix then moves by the same amount, however unevenly the gradient is spread.

The split, in one place (split_parameters): Muon takes the matrices inside the blocks;
AdamW takes the token and position embeddings and the head (their rows are looked up, not
multiplied, so orthogonalising them means nothing) and every 1-D parameter (norm weights,
biases).
"""

from __future__ import annotations

import inspect
import typing

import torch

OptimizerName = typing.Literal["adamw", "muon"]


def split_parameters(model: torch.nn.Module) -> tuple[list, list, list]:
    """(hidden matrices, embeddings and head, 1-D parameters) of a GPT, each parameter once."""
    matrices, embeddings, vectors, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            vectors.append(p)
        elif name.startswith("transformer.h."):
            matrices.append(p)
        else:  # wte, wpe, lm_head
            embeddings.append(p)
    return matrices, embeddings, vectors


def adamw(groups: list[dict], lr: float, betas: tuple[float, float],
          device_type: str) -> torch.optim.AdamW:
    """torch's AdamW, fused into one kernel where torch has it (CUDA; CPU from torch 2.4:
    about 4x faster than the per-tensor loop, a few ms a step for small CPU models)."""
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    fused_devices = ("cuda", "cpu") if version >= (2, 4) else ("cuda",)
    fused = device_type in fused_devices and "fused" in inspect.signature(
        torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """About the semi-orthogonal matrix nearest to g (U V^T of its SVD), for g of shape
    (..., rows, cols): a matrix, or a stack of matrices done at once.

    Scaled so its largest singular value is at most 1, X goes through steps of the odd
    polynomial X <- a X + b (X X^T) X + c (X X^T)^2 X, which pushes every singular value
    towards 1 (to within about 0.3: enough for an update, much cheaper than an SVD). The
    coefficients are those published with Muon.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # work on the wide side: X X^T is the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(s, s, s, beta=b, alpha=c), x, beta=a) \
            if x.dim() == 3 else a * x + (b * s + c * s @ s) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, orthogonalised by newton_schulz, for 2-D parameters.

    update = newton_schulz(nesterov momentum of the gradient) * sqrt(max(1, rows / cols)),
    p <- p * (1 - lr * weight_decay) - lr * update. The scale keeps the update's RMS per
    element about the same for tall and wide matrices. Matrices of one shape are
    orthogonalised together, as one stack: on small models that is most of Muon's time.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.float32):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(self.state[p]["momentum_buffer"])
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            if group["nesterov"]:
                grads = torch._foreach_lerp(grads, bufs, group["momentum"])
            else:
                grads = bufs
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for (rows, cols), index in by_shape.items():
                stack = torch.stack([grads[i] for i in index])
                updates = newton_schulz(stack, group["ns_steps"], self.ns_dtype)
                updates *= max(1.0, rows / cols) ** 0.5
                for i, update in zip(index, updates):
                    if group["weight_decay"]:
                        params[i].mul_(1 - group["lr"] * group["weight_decay"])
                    params[i].add_(update, alpha=-group["lr"])
        return loss


class Optimizers:
    """Several optimizers stepped as one: what the training loop and a checkpoint see.

    param_groups lists every group of every optimizer (the loop sets each group's lr);
    state_dict / load_state_dict hold one entry per optimizer, in order.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self):
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def step(self, closure=None) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError("the checkpoint's optimizer state is of another optimizer")
        for opt, s in zip(self.optimizers, saved):
            opt.load_state_dict(s)


def build_optimizer(model: torch.nn.Module, name: OptimizerName, *, learning_rate: float,
                    weight_decay: float, betas: tuple[float, float], device_type: str,
                    muon_lr: float = 0.02, muon_momentum: float = 0.95,
                    embedding_lr: float | None = None, head_lr: float | None = None,
                    ns_dtype: torch.dtype = torch.float32):
    """The optimizer of a run. 'adamw': nanoGPT's (GPT.configure_optimizers). 'muon': Muon
    (muon_lr) for the hidden matrices, AdamW for embeddings (embedding_lr), an untied head
    (head_lr) and 1-D parameters (learning_rate).

    Every group carries lr_scale, its learning rate over learning_rate: the loop sets
    lr = get_lr(step) * lr_scale, so one schedule drives all of them.
    """
    if name == "adamw":
        opt = model.configure_optimizers(weight_decay, learning_rate, betas, device_type)
        for group in opt.param_groups:
            group["lr_scale"] = 1.0
        return opt
    matrices, embeddings, vectors = split_parameters(model)
    tied = model.config.tie_embeddings  # then the head is the token embedding matrix
    head = [] if tied else [model.lm_head.weight]
    embed = [p for p in embeddings if tied or p is not model.lm_head.weight]

    def group(params: list, lr: float, decay: float) -> dict:
        return {"params": params, "lr": lr, "lr_scale": lr / learning_rate,
                "weight_decay": decay}

    groups = [group(embed, embedding_lr or learning_rate, 0.0),
              group(vectors, learning_rate, 0.0), group(head, head_lr or learning_rate, 0.0)]
    aux = adamw([g for g in groups if g["params"]], learning_rate, betas, device_type)
    muon = Muon([{"params": matrices, "lr": muon_lr, "lr_scale": muon_lr / learning_rate}],
                lr=muon_lr, momentum=muon_momentum, weight_decay=weight_decay,
                ns_dtype=ns_dtype)
    return Optimizers(aux, muon)
