"""Checkpoints: the training state a resume needs, crash-safe saving, safe loading (no pickle).

TrainState is the one writer (to_checkpoint) and the one reader (restore) of the format. A
checkpoint is a dict of tensors and plain values (str/int/float/bool/None/list/dict) under
CHECKPOINT_KEYS. It is written to a temporary file in the same directory, fsynced, then
renamed over the old one, so a crash leaves either the old or the new file; it is read with
torch.load(weights_only=True).

A LoRA run's checkpoint holds only the adapters under "model"; its "lora" entry names the
frozen base (a GPT-2 name, a Hugging Face directory or another run's checkpoint) and the
sha256 of the base's weights, which every load checks (model_to_restore).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanogpt.errors import UserError, first_line
from nanogpt.fileio import atomic_write
from nanogpt.lora import (
    adapter_state_dict,
    add_adapters,
    has_adapters,
    load_adapters,
    merge_adapters,
    weights_sha256,
)
from nanogpt.model import GPT, GPTConfig
from nanogpt.pretrained import GPT2_NAMES, exported_tokenizer, from_pretrained
from nanogpt.randomness import get_rng_state, set_rng_state
from nanogpt.tokenizer import tokenizer_from_dict

CKPT_NAME = "ckpt.pt"
LAST_NAME = "last.pt"
CHECKPOINT_KEYS = ("model", "model_args", "optimizer", "scaler", "iter_num", "best_val_loss",
                   "elapsed", "planned_iters", "rng", "config", "tokenizer", "pretrained",
                   "tokens_seen", "lora", "attention_plan")


class CheckpointError(UserError):
    pass


@dataclass
class TrainState:
    """Everything a resume needs: the model, the optimizer and GradScaler, the loop's counters,
    and what the run is (its config, tokenizer and the pretrained weights it started from)."""

    model: GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    iter_num: int = 0
    best_val_loss: float = math.inf
    elapsed: float = 0.0
    """Seconds the run has taken so far (start-up included), across resumes."""
    planned_iters: int | None = None
    """The length a time-budgeted run planned for itself (a resume keeps to it)."""
    config: dict = field(default_factory=dict)
    """The run's TrainConfig, as a dict."""
    tokenizer: dict = field(default_factory=dict)
    """The dataset's tokenizer, as meta.json holds it."""
    pretrained: str | None = None
    """The GPT-2 name or directory, or the run, the weights started from (kept across
    resumes)."""
    tokens_seen: int = 0
    """Training tokens the run has stepped through, across resumes."""
    lora: dict | None = None
    """A LoRA run: {'rank', 'alpha', 'targets', 'base', 'base_sha256'} (see lora_settings);
    model then holds adapters, and only they are saved. None: every weight is saved."""

    def to_checkpoint(self) -> dict:
        """The checkpoint of this state and of every RNG the training step draws from."""
        return {
            "model": adapter_state_dict(self.model) if self.lora else self.model.state_dict(),
            "model_args": dataclasses.asdict(self.model.config),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "elapsed": self.elapsed,
            "planned_iters": self.planned_iters,
            "rng": get_rng_state(),
            "config": self.config,
            "tokenizer": self.tokenizer,
            "pretrained": self.pretrained,
            "tokens_seen": self.tokens_seen,
            "lora": self.lora,
            "attention_plan": dict(self.model.attention_plan),  # what attention='auto' chose
        }

    def restore(self, ckpt: dict) -> None:
        """Load ckpt into this state: weights, optimizer, scaler, counters and every RNG.

        The model must have ckpt's shape, and its adapters for a LoRA checkpoint (build it
        with model_to_restore). config stays this run's (flags may change on resume); the rest
        is the checkpoint's.
        """
        load_model_weights(self.model, ckpt)
        # the moments and momentum buffers are the checkpoint's; the hyperparameters (betas,
        # weight decay, momentum, each group's share of the learning rate) stay this run's,
        # so flags changed on resume take effect (torch would restore the saved ones)
        settings = [{k: v for k, v in g.items() if k != "params"}
                    for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError):
            raise CheckpointError("cannot resume: the checkpoint's optimizer state does not "
                                  "fit this run's optimizer; resume with the optimizer "
                                  "settings it was trained with") from None
        for group, values in zip(self.optimizer.param_groups, settings):
            group.update(values)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iter_num, self.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        self.elapsed = ckpt.get("elapsed", 0.0)
        self.planned_iters = ckpt.get("planned_iters")
        self.tokenizer, self.pretrained = ckpt["tokenizer"], ckpt.get("pretrained")
        self.tokens_seen, self.lora = ckpt.get("tokens_seen", 0), ckpt.get("lora")
        # the same attention paths as before the stop: 'auto' measures only what is new
        self.model.attention_plan.update(ckpt.get("attention_plan") or {})
        set_rng_state(ckpt["rng"])


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write payload to path so that a crash leaves the old or the new checkpoint, and no
    temporary file. A failed write is a CheckpointError saying why."""
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else \
            first_line(e, 200)
        raise CheckpointError(f"could not save the checkpoint to {path} ({why})") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with weights_only=True; a missing, damaged or foreign file is a one-line
    CheckpointError (never advice to load it unsafely)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is damaged, or not a nanogpt checkpoint ({why})")

    if path.stat().st_size == 0:
        raise refuse("the file is empty")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # what weights_only refuses to build: objects, not tensors
        raise refuse("it is not a file of tensors that loads safely") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise refuse("it cannot be read as a torch checkpoint: truncated or altered") from None
    except Exception as e:  # noqa: BLE001 - whatever else a foreign file makes torch raise
        raise refuse(f"torch.load raised {type(e).__name__}") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args"} <= ckpt.keys():
        raise refuse("it holds no model and model_args")
    if not isinstance(ckpt.get("tokenizer"), dict):  # karpathy/nanoGPT's have none
        raise refuse("it holds no tokenizer")
    try:
        GPTConfig(**ckpt["model_args"])
    except (TypeError, ValueError) as e:  # another program's, or another version's
        raise refuse(f"its model_args are not this nanogpt's: {e}") from None
    return ckpt


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CKPT_NAME


def _model_file(out_dir: str | os.PathLike) -> Path | None:
    """ckpt.pt (the best-val model where always_save_checkpoint=False), or last.pt when the
    run stopped before it wrote one; None when out_dir holds neither."""
    return next((p for p in (Path(out_dir) / CKPT_NAME, Path(out_dir) / LAST_NAME)
                 if p.is_file()), None)


def model_checkpoint(out_dir: str | os.PathLike) -> Path:
    """The checkpoint to sample or export (_model_file), or a CheckpointError."""
    path = _model_file(out_dir)
    if path is not None:
        return path
    raise CheckpointError(f"no checkpoint in {out_dir} (expected {checkpoint_path(out_dir)}); "
                          f"train first or pass the out_dir you trained into")


def newest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The file to resume from: ckpt.pt, or last.pt when a stop wrote that later.

    last.pt exists only for runs with always_save_checkpoint=False, whose ckpt.pt is the
    best-val model: a Ctrl-C there saves the latest state beside it instead of over it.
    """
    found = [p for p in (Path(out_dir) / CKPT_NAME, Path(out_dir) / LAST_NAME) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def model_config(ckpt: dict, **runtime: object) -> GPTConfig:
    """The checkpoint's GPTConfig; runtime may change what does not touch the weights
    (model.RUNTIME_FIELDS)."""
    return GPTConfig(**ckpt["model_args"]).with_runtime(**runtime)


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", **runtime) -> GPT:
    """The checkpoint's model, with its weights (a LoRA run's: its base with the adapters)."""
    model = model_to_restore(ckpt, **runtime)
    load_model_weights(model, ckpt)
    return model.to(device)


def model_to_restore(ckpt: dict, lora_dropout: float = 0.0, **runtime) -> GPT:
    """A model of the checkpoint's shape to load its weights into: for a LoRA checkpoint,
    its base (loaded, cropped and checked against the saved hash) with fresh adapters."""
    if not ckpt.get("lora"):
        return GPT.empty(model_config(ckpt, **runtime))  # every weight is loaded next
    lora = ckpt["lora"]
    if lora["base"] not in GPT2_NAMES and not Path(lora["base"]).exists():
        raise CheckpointError(f"this LoRA run's base weights are gone: {lora['base']} does not "
                              f"exist; put them back there to resume, sample or export it")
    base, _ = load_weights(lora["base"], **runtime)
    block_size = ckpt["model_args"]["block_size"]
    if block_size < base.config.block_size:
        base.crop_block_size(block_size)
    digest = weights_sha256(base.state_dict())
    if digest != lora["base_sha256"]:
        raise CheckpointError(f"the base weights at {lora['base']} are not those this LoRA run "
                              f"was trained on (sha256 {digest[:12]}..., the checkpoint has "
                              f"{lora['base_sha256'][:12]}...); restore the original base")
    return add_adapters(base, lora["rank"], lora["alpha"], lora["targets"], lora_dropout)


def load_model_weights(model: GPT, ckpt: dict) -> None:
    """ckpt's weights into model (built by model_to_restore): all of them, or the adapters."""
    if ckpt.get("lora"):
        try:
            load_adapters(model, ckpt["model"])
        except ValueError as e:
            raise CheckpointError(f"cannot load the LoRA checkpoint: {e}") from None
    else:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:  # missing, unexpected or misshapen weights
            raise CheckpointError("the checkpoint's weights do not fit its model_args: "
                                  + " ".join(str(e).split())[:300]) from None


def lora_settings(base: GPT, source: str, rank: int, alpha: float, targets: list[str]) -> dict:
    """What a LoRA checkpoint records of its adapters and of base, the frozen model they adapt
    (as loaded from source and cropped, before the adapters are added)."""
    return {"rank": rank, "alpha": alpha, "targets": list(targets),
            "base": base_reference(source), "base_sha256": weights_sha256(base.state_dict())}


def base_reference(source: str) -> str:
    """How a checkpoint names the weights it started from: a GPT-2 name as it is, a path in
    full, so that it still resolves from another working directory."""
    if source in GPT2_NAMES and not Path(source).is_dir():
        return source
    return str(Path(source).resolve())


def check_source(source: str) -> None:
    """CheckpointError unless source is a GPT-2 name or an existing path."""
    if source not in GPT2_NAMES and not Path(source).exists():
        raise CheckpointError(f"{source} does not exist; give a GPT-2 name "
                              f"({', '.join(GPT2_NAMES)}), a Hugging Face GPT-2 directory, or "
                              f"a nanogpt run (its out_dir or a checkpoint file)")


def run_checkpoint(source: str | os.PathLike) -> Path | None:
    """The nanogpt checkpoint source names (a checkpoint file, or an out_dir holding ckpt.pt,
    or last.pt while it has no ckpt.pt); None when source is something else (a GPT-2 name or
    Hugging Face directory)."""
    path = Path(source)
    if path.is_file():
        return path
    return _model_file(path) if path.is_dir() else None


def load_weights(source: str, **runtime) -> tuple[GPT, dict | None]:
    """(model, tokenizer dict) from source: a nanogpt checkpoint (a file or an out_dir; a
    LoRA run's adapters merged in) with its tokenizer, or GPT-2-format weights (a name or a
    Hugging Face directory) with the tokenizer a nanogpt export kept beside them, else None,
    meaning GPT-2's BPE. runtime: model.RUNTIME_FIELDS."""
    check_source(source)
    path = run_checkpoint(source)
    if path is None:
        return from_pretrained(source, **runtime), exported_tokenizer(source)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, **runtime)
    return (merge_adapters(model) if has_adapters(model) else model), ckpt["tokenizer"]


def load_model(out_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer) from the checkpoint in out_dir. For notebooks:

        model, tok = load_model("out-shakespeare-char")
    """
    ckpt = load_checkpoint(model_checkpoint(out_dir), map_location=device)
    model = model_from_checkpoint(ckpt, device)
    model.eval()
    return model, tokenizer_from_dict(ckpt["tokenizer"])
