"""As a user would: scripts in subprocesses, signals, crashes."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanogpt.checkpoint import load_checkpoint
from tests.conftest import (
    ROOT,
    SHAKESPEARE,
    read_log,
    run_script,
    tiny_args,
    train_losses,
)

pytestmark = pytest.mark.slow


def assert_same_weights(a_dir, b_dir):
    a, b = load_checkpoint(a_dir / "ckpt.pt"), load_checkpoint(b_dir / "ckpt.pt")
    assert a["iter_num"] == b["iter_num"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_prepare_train_sample_as_a_user(tmp_path, shakespeare_text):
    # the prepare script works on its own, next to its input.txt
    script_dir = tmp_path / "shakespeare_char"
    script_dir.mkdir()
    shutil.copy(ROOT / "data" / "shakespeare_char" / "prepare.py", script_dir)
    shutil.copy(SHAKESPEARE, script_dir / "input.txt")
    prep = subprocess.run([sys.executable, str(script_dir / "prepare.py")], capture_output=True,
                          text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    assert "vocab size 65" in prep.stdout
    # train.py prepares a dataset that only has input.txt
    data_dir = tmp_path / "data"
    (data_dir / "shakespeare_char").mkdir(parents=True)
    shutil.copy(SHAKESPEARE, data_dir / "shakespeare_char" / "input.txt")
    out = tmp_path / "out"
    result = run_script("train.py", tiny_args(data_dir, out, max_iters=30, eval_interval=15))
    assert result.returncode == 0, result.stderr
    assert "number of parameters" in result.stdout
    assert "dataset = 'shakespeare_char'" in result.stdout
    assert (data_dir / "shakespeare_char" / "train.bin").exists()
    evals = read_log(out, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    sample = run_script("sample.py", ["--out_dir", str(out), "--num_samples=2",
                                      "--max_new_tokens=50", "--start=KING"])
    assert sample.returncode == 0, sample.stderr
    texts = sample.stdout.split("\n---------------\n")
    assert [len(t) for t in texts] == [54, 54, 0]


def test_a_user_error_has_no_traceback(tmp_path):
    result = run_script("train.py", ["--n_layr=2"])
    assert result.returncode == 2
    assert result.stderr == "error: unknown config key 'n_layr'; did you mean 'n_layer'?\n"


def _start(data_dir, out, **kw):
    args = tiny_args(data_dir, out, **kw)
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(out_dir, predicate, proc, timeout=120):
    deadline = time.time() + timeout
    log = out_dir / "log.jsonl"
    while time.time() < deadline:
        if log.exists():
            rows = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
            if predicate(rows):
                return rows
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for training progress")


RUN = dict(max_iters=60, eval_interval=10, dropout=0.1, always_save_checkpoint=True)


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "out"
    result = run_script("train.py", tiny_args(data_dir, out, **RUN))
    assert result.returncode == 0, result.stderr
    return out


def test_sigterm_saves_and_resume_is_exact(data_dir, tmp_path, straight_run):
    out = tmp_path / "out"
    proc = _start(data_dir, out, **RUN)
    _wait_for(out, lambda rows: any(r["event"] == "train" and r["iter"] >= 25 for r in rows), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in err and "--init_from=resume" in err
    stopped_at = load_checkpoint(out / "ckpt.pt")["iter_num"]
    assert 25 < stopped_at < 60
    resumed = run_script("train.py", tiny_args(data_dir, out, **RUN, init_from="resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert train_losses(out) == train_losses(straight_run)
    assert_same_weights(out, straight_run)


def test_sigkill_after_a_save_then_resume_is_exact(data_dir, tmp_path, straight_run):
    out = tmp_path / "out"
    proc = _start(data_dir, out, **RUN)
    _wait_for(out, lambda rows: any(r["event"] == "checkpoint" and r["iter"] >= 20
                                    for r in rows), proc)
    proc.kill()
    proc.communicate(timeout=60)
    first = train_losses(out)
    resumed = run_script("train.py", tiny_args(data_dir, out, **RUN, init_from="resume"))
    assert resumed.returncode == 0, resumed.stderr
    straight = train_losses(straight_run)
    # steps re-run after the kill repeat exactly, and the continuation matches
    assert all(straight[i] == loss for i, loss in first.items())
    assert train_losses(out) == straight
    assert_same_weights(out, straight_run)


SAVER = """
import sys, torch
from nanogpt.checkpoint import save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    save_checkpoint(path, {"model": {"w": torch.full((2_000_000,), float(i))},
                           "model_args": {}, "iter_num": i,
                           "tokenizer": {"kind": "char", "chars": ["a"]}})
    print(i, flush=True)
"""


def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    for delay in (0.8, 1.1, 1.37, 1.61, 1.9):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one save has completed
        time.sleep(delay - 0.75)
        proc.kill()
        proc.communicate()
        ckpt = load_checkpoint(path)
        assert torch.all(ckpt["model"]["w"] == float(ckpt["iter_num"]))
