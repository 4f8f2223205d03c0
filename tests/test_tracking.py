"""Watching a run: log fields, samples at evaluations, W&B, the overfitting warning, and
compile=auto's check."""

from __future__ import annotations

import json
import logging
import os
import sysconfig

import pytest

from nanogpt import device as device_module
from nanogpt import trainer
from nanogpt.cli import train_main
from nanogpt.config import parse_args
from nanogpt.errors import UserError
from nanogpt.rundir import RunLog
from nanogpt.sampling import generate_text
from nanogpt.tokenizer import tokenizer_from_dict
from nanogpt.tracking import (
    SAMPLE_AUTO_TOKENS,
    SAMPLE_TEMPERATURE,
    SAMPLE_TOP_K,
    OverfitWatch,
    sample_length,
)
from nanogpt.trainer import train
from tests.conftest import read_log, tiny_args

TIMING = ("ms", "tok_per_s", "elapsed", "time", "seconds")


def train_tokens(data_dir) -> int:
    meta = json.loads((data_dir / "shakespeare_char" / "meta.json").read_text())
    return meta["train_tokens"]


# ---- the figures of each record ----

def test_records_count_tokens_and_epochs_across_a_resume(data_dir, tmp_path):
    common = dict(max_iters=12, eval_interval=4, gradient_accumulation_steps=2)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args(tiny_args(data_dir, straight, **common)))
    train(parse_args(tiny_args(data_dir, split, **{**common, "max_iters": 6})))
    train(parse_args(tiny_args(data_dir, split, init_from="resume", **common)))
    per_step = 2 * 8 * 32  # accumulation x batch x block
    records = read_log(straight, "train")
    assert [r["tokens"] for r in records] == [per_step * (i + 1) for i in range(12)]
    for r in records:
        assert r["epochs"] == pytest.approx(r["tokens"] / train_tokens(data_dir))
        assert r["grad_norm"] > 0 and "mfu" not in r  # no known peak for a CPU
    assert [e["tokens"] for e in read_log(straight, "eval")] == [0, 4 * per_step,
                                                                  8 * per_step, 12 * per_step]

    def figures(out):  # everything but the timings
        return [{k: v for k, v in r.items() if k not in TIMING} for r in read_log(out, "train")]

    assert figures(split) == figures(straight)


# ---- a sample at each evaluation ----

def test_samples_at_evals_are_fixed_and_change_nothing_else(data_dir, tmp_path):
    runs = {}
    for n in (0, 24):
        out = tmp_path / f"sample{n}"
        runs[n] = (out, train(parse_args(tiny_args(data_dir, out, max_iters=10,
                                                   eval_interval=5, sample_tokens=n,
                                                   dropout=0.1))))
    (quiet, _), (talking, result) = runs[0], runs[24]
    assert read_log(quiet, "sample") == []
    samples = read_log(talking, "sample")
    assert [s["iter"] for s in samples] == [5, 10]  # not of the random weights at step 0
    assert all(s["prompt"] == "\n" and s["seconds"] > 0 for s in samples)
    assert [r["loss"] for r in read_log(talking, "train")] == \
        [r["loss"] for r in read_log(quiet, "train")]  # sampling draws from its own RNG
    # the last sample is the trained model's, from the same prompt and seed as every other
    tok = tokenizer_from_dict(json.loads((data_dir / "shakespeare_char" / "meta.json")
                                         .read_text())["tokenizer"])
    text = generate_text(result.model, tok.encode, tok.decode, "\n", max_new_tokens=24,
                         temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, seed=1337)[0]
    assert samples[-1]["text"] == text and len(text) == 24
    again = train(parse_args(tiny_args(data_dir, talking, init_from="resume", eval_only=True,
                                       sample_tokens=24)))
    assert again.iter_num == 10 and read_log(talking, "sample")[-1]["text"] == text


def test_samples_are_on_by_default_for_small_models_only():
    assert sample_length(-1, 10_650_000) == SAMPLE_AUTO_TOKENS  # the baby GPT
    assert sample_length(-1, 124_000_000) == 0  # GPT-2: seconds per sample on a CPU
    assert sample_length(0, 1000) == 0 and sample_length(50, 124_000_000) == 50


# ---- the overfitting warning ----

def test_overfitting_warns_once_when_val_loss_rises_over_many_epochs(tmp_path, caplog):
    jlog = RunLog(tmp_path, append=False)
    watch = OverfitWatch(train_tokens=1000)
    # (val loss, best so far, tokens seen, tokens at the end)
    quiet = [(2.0, 2.1, 500, 5000),     # improving
             (2.015, 2.0, 1200, 5000),  # within 1% of the best: noise
             (2.1, 2.0, 1300, 5000),    # above it once
             (2.0, 2.0, 1400, 5000)]    # back: the count restarts
    for val, best, seen, end in quiet:
        watch.check(10, val, best, seen, end, jlog)
    assert read_log(tmp_path) == []
    for it, seen in ((20, 1500), (30, 1600), (40, 1700)):
        watch.check(it, 2.2, 2.0, seen, 5000, jlog)
    warnings = read_log(tmp_path, "warning")
    assert [w["iter"] for w in warnings] == [30]  # the second rise in a row, then never again
    assert "1.6 epochs of the 1,000 training tokens" in warnings[0]["message"]
    assert "5.0 times by max_iters" in warnings[0]["message"]
    assert sum("likely overfitting" in r.getMessage() for r in caplog.records) == 1
    for early in (OverfitWatch(1000), OverfitWatch(1000)):  # under an epoch, or a short run
        for args in ((900, 5000), (1500, 1800)):
            early.check(1, 2.2, 2.0, *args, jlog)
            early.check(2, 2.2, 2.0, *args, jlog)
    assert len(read_log(tmp_path, "warning")) == 1


def test_a_run_warns_when_it_overfits(data_dir, tmp_path, monkeypatch):
    val = iter([4.0, 3.0, 2.5, 2.6, 2.7, 2.8, 2.9])  # falls, then rises

    def fake_estimate_loss(*args, **kwargs):
        v = next(val)
        return {"train": 1.0, "val": v, "train_bpb": 1.0, "val_bpb": v}

    monkeypatch.setattr(trainer, "estimate_loss", fake_estimate_loss)
    out = tmp_path / "out"
    # 3,000 characters, 90% to train: 2,700 tokens; 256 tokens per step
    (tmp_path / "small.txt").write_text((data_dir / "shakespeare_char" / "input.txt")
                                        .read_text()[:3000])
    from nanogpt.prepare import prepare_text

    prepare_text(tmp_path / "small.txt", tmp_path / "data" / "small")
    train(parse_args(tiny_args(tmp_path / "data", out, dataset="small", max_iters=60,
                               eval_interval=10)))
    warnings = read_log(out, "warning")
    assert [w["iter"] for w in warnings] == [40]
    assert "3.8 epochs of the 2,700 training tokens" in warnings[0]["message"]


# ---- Weights & Biases ----

def test_wandb_gets_every_record_and_the_resolved_config(data_dir, tmp_path, monkeypatch):
    """In wandb's offline mode (no network): each log.jsonl record becomes one row, plotted
    against iter; the config is the run's, with what was resolved at start."""
    wandb = pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows, configs = [], []
    real_init, real_log = wandb.init, Run.log

    def init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        configs.append(dict(run.config))
        return run

    def log(self, data, *args, **kwargs):
        rows.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(Run, "log", log)
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=6, eval_interval=3, sample_tokens=8,
                               wandb_log=True, wandb_project="nanogpt-test")))
    expected = []
    for record in read_log(out):
        row = {f"{record['event']}/{k}": v for k, v in record.items()
               if k not in ("event", "iter")}
        expected.append({"iter": record["iter"], **row} if "iter" in record else row)
    assert rows == expected
    assert {"train/grad_norm", "train/tokens", "train/epochs", "eval/val_loss",
            "sample/text"} <= {k for row in rows for k in row}
    config = configs[0]
    assert config["n_embd"] == 32 and config["wandb_project"] == "nanogpt-test"
    assert config["resolved"]["dtype"] == "float32"
    assert config["resolved"]["tokens_per_iter"] == 256
    runs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_wandb_asked_for_but_missing_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    out = tmp_path / "out"
    code = train_main(tiny_args(data_dir, out, wandb_log=True))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "wandb_log=True needs wandb: pip install 'nanogpt[wandb]'" in err
    assert not out.exists()


def test_wandb_that_cannot_start_is_one_line_and_changes_no_file(data_dir, tmp_path,
                                                                   monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=2, eval_interval=2)))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def init(*args, **kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", init)
    code = train_main(["--init_from=resume", f"--out_dir={out}", "--max_iters=4",
                       "--wandb_log"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "W&B did not start (No API key configured. Use `wandb login` to log in.); run " \
           "`wandb login`" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---- compile=auto ----

def test_compile_auto_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    problem = "Triton is not installed, or does not support this GPU"
    monkeypatch.setattr(device_module, "compile_problem", lambda device: problem)
    with caplog.at_level(logging.WARNING, logger="nanogpt"):
        assert device_module.resolve_compile("auto", "cuda") is False
    assert [r.getMessage() for r in caplog.records] == [
        f"compile=auto: {problem}; training without torch.compile"]
    with pytest.raises(UserError, match=f"compile=True, but torch.compile cannot work here: "
                                        f"{problem}; fix that or use --compile=False"):
        device_module.resolve_compile(True, "cuda")
    assert device_module.resolve_compile("auto", "cpu") is False  # auto: CUDA only
    monkeypatch.setattr(device_module, "compile_problem", lambda device: None)
    assert device_module.resolve_compile("auto", "cuda") is True
    assert device_module.resolve_compile(True, "cpu") is True
    assert device_module.resolve_compile(False, "cuda") is False


def test_the_compile_check_finds_what_is_missing(monkeypatch):
    import torch._dynamo
    import torch.utils._triton

    for var in ("CC", "CXX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(device_module.shutil, "which", lambda name: None)
    assert "needs the C++ compiler 'g++'" in device_module.compile_problem("cpu")
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "Triton is not installed" in device_module.compile_problem("cuda")
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    assert "Triton needs a C compiler" in device_module.compile_problem("cuda")
    monkeypatch.setattr(device_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    with monkeypatch.context() as m:  # Python's C headers, which Triton's launchers include
        m.setattr(device_module.sysconfig, "get_paths", lambda: {"include": "/nowhere"})
        assert "/nowhere/Python.h is missing" in device_module.compile_problem("cuda")
        assert device_module.compile_problem("cpu") is None
    headers = os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    assert (device_module.compile_problem("cuda") is None) == headers
    assert device_module.compile_problem("cpu") is None
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert "cannot compile on Python" in device_module.compile_problem("cpu")


def test_compile_true_that_cannot_work_stops_before_training(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "compile_problem", lambda device: "no compiler")
    with pytest.raises(UserError, match="compile=True, but torch.compile cannot work here"):
        train(parse_args(tiny_args(data_dir, tmp_path / "out", compile=True)))
    assert not (tmp_path / "out").exists()
