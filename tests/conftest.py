"""Shared fixtures: datasets prepared from the data shipped in nanogpt/assets, tiny configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt"

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Tests may change the default dtype or thread count; undo it."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_decode_checks(monkeypatch):
    """Each test asks afresh whether the flat decode step fits its model: answers kept from
    another test (with other patches in force) would let it skip the check it tests."""
    from nanogpt import decode_step

    monkeypatch.setattr(decode_step, "_VERDICTS", {})


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, shakespeare_text) -> Path:
    """A data_dir whose shakespeare_char dataset is prepared from the shipped copy."""
    from nanogpt.data import prepare_shakespeare_char

    root = tmp_path_factory.mktemp("data")
    ds = root / "shakespeare_char"
    ds.mkdir()
    shutil.copy(SHAKESPEARE, ds / "input.txt")
    prepare_shakespeare_char(ds)
    return root


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    """A GPT small enough for any test, its weights drawn from seed; overrides are GPTConfig
    fields."""
    torch.manual_seed(seed)
    config = dict(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                  bias=True)
    return GPT(GPTConfig(**{**config, **overrides}))


def read_log(out_dir: Path, event: str | None = None) -> list[dict]:
    """The records of out_dir/log.jsonl, or those of one event ('train', 'eval', ...)."""
    lines = (Path(out_dir) / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if event is None or r["event"] == event]


def train_losses(out_dir: Path) -> dict[int, float]:
    """{iteration: training loss} from out_dir/log.jsonl."""
    return {r["iter"]: r["loss"] for r in read_log(out_dir, "train")}


def tiny_args(data_dir: Path, out_dir: Path, **overrides) -> list[str]:
    """argv for a model small enough to train a few dozen steps in seconds on a CPU; without
    samples at evaluations unless asked (tests/test_tracking.py tests them)."""
    values = dict(dataset="shakespeare_char", data_dir=str(data_dir), out_dir=str(out_dir),
                  n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=20,
                  eval_interval=10, eval_iters=2, log_interval=1, warmup_iters=5,
                  lr_decay_iters=20, learning_rate=3e-3, min_lr=3e-4, device="cpu",
                  dtype="float32", compile=False, dropout=0.0, sample_tokens=0)
    values.update(overrides)
    return [f"--{k}={v}" for k, v in values.items()]


def run_script(script: str, args: list[str], cwd: Path | None = None, timeout: float = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py / sample.py as a user would, in a subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("NANOGPT_DEBUG", None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
