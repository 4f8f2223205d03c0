"""Checkpoints: crash-safe saving, safe loading (no pickle), and loading a trained model.

A checkpoint is a dict of tensors and plain values (str/int/float/bool/list/dict):
`model`, `optimizer`, `scaler`, `model_args`, `config`, `tokenizer`, `iter_num`,
`best_val_loss`, `rng`. It is written to a temporary file in the same directory, fsynced,
then renamed over the old one, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from nanogpt.data import tokenizer_from_dict
from nanogpt.errors import UserError
from nanogpt.fileio import atomic_write
from nanogpt.model import GPT, GPTConfig

CKPT_NAME = "ckpt.pt"
LAST_NAME = "last.pt"
CONFIG_NAME = "train_config.json"  # not config.json: export may write a HF one


class CheckpointError(UserError):
    pass


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write payload to path so that a crash leaves the old or the new checkpoint."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with weights_only=True; a missing or damaged file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not a nanogpt checkpoint "
                              f"({first[:200]})") from None
    except Exception as e:  # the unpickler refusing a non-weights object lands here too
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a nanogpt checkpoint (no model/model_args)")
    return ckpt


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CKPT_NAME


def newest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The file to resume from: ckpt.pt, or last.pt when a stop wrote that later.

    last.pt exists only for runs with always_save_checkpoint=False, whose ckpt.pt is the
    best-val model: a Ctrl-C there saves the latest state beside it instead of over it.
    """
    found = [p for p in (Path(out_dir) / CKPT_NAME, Path(out_dir) / LAST_NAME) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def save_run_config(out_dir: str | os.PathLike, config: dict) -> None:
    """out_dir/train_config.json: the run's resolved TrainConfig, readable without torch."""
    text = json.dumps(config, indent=1).encode("utf-8")
    atomic_write(Path(out_dir) / CONFIG_NAME, lambda f: f.write(text))


def saved_run_config(out_dir: str | os.PathLike) -> dict | None:
    """The train_config.json a run left in out_dir, or None if there is none or unreadable."""
    try:
        return json.loads((Path(out_dir) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", **overrides) -> GPT:
    """The checkpoint's model; overrides may change what does not touch the weights
    (model.RUNTIME_FIELDS)."""
    model = GPT(GPTConfig(**ckpt["model_args"]).with_runtime(**overrides))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def load_model(out_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer) from the checkpoint in out_dir. For notebooks:

        model, tok = load_model("out-shakespeare-char")
    """
    path = checkpoint_path(out_dir)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {out_dir} (expected {path}); train first "
                              f"or pass the out_dir you trained into")
    ckpt = load_checkpoint(path, map_location=device)
    model = model_from_checkpoint(ckpt, device)
    model.eval()
    return model, tokenizer_from_dict(ckpt["tokenizer"])
