"""Nothing lost, nothing overwritten: one run per out_dir, failed saves, damaged data and
checkpoints, each a one-line error."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nanogpt import fileio
from nanogpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanogpt.cli import train_main
from nanogpt.config import parse_args
from nanogpt.data import CHECKED_NAME, CharTokenizer, open_dataset, write_dataset
from nanogpt.errors import UserError
from nanogpt.rundir import LOCK_NAME, OutDirInUse, RunLock, RunLog
from nanogpt.trainer import train
from tests.conftest import ROOT, read_log, tiny_args

# ---- one run per out_dir ----


def test_a_second_run_in_the_same_out_dir_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    with RunLock(out):
        assert (out / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(OutDirInUse, match=f"{out} is in use by another training run "
                                              f"\\(pid {os.getpid()} on .*--out_dir"):
            with RunLock(out):
                pass
    assert not out.exists()  # the lock made the directory, and nothing else was written


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nanogpt.rundir import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)",
         str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutDirInUse, match=f"pid {holder.pid} "):
        RunLock(out).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed run
    with RunLock(out):
        assert (out / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_train_py_runs_in_one_out_dir(data_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(data_dir, out, max_iters=100000, eval_interval=1000)
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "log.jsonl").exists() or not read_log(out, "train"):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, str(ROOT / "train.py"), *args,
                                 "--overwrite"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert second.stderr.startswith(f"error: {out} is in use by another training run "
                                        f"(pid {first.pid} on ")
        assert second.stderr.count("\n") == 1
        assert first.poll() is None  # the first run trains on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] > 0  # the first run's own save
    assert all(r["event"] in ("eval", "train", "checkpoint") for r in read_log(out))


# ---- failed writes ----

class _FillsUp(io.FileIO):
    """A file on a disk with `room` bytes left: writes past it fail with ENOSPC."""

    room = 200_000

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_during_a_save_stops_the_run_with_one_line(data_dir, tmp_path,
                                                                monkeypatch, capsys):
    out = tmp_path / "out"
    args = tiny_args(data_dir, out, max_iters=30, eval_interval=10, n_embd=32)
    saves = {"n": 0}
    real_open = open

    def open_on_a_filling_disk(path, mode="r", *a, **k):
        if "w" in mode and ".ckpt.pt.tmp-" in str(path):
            saves["n"] += 1
            if saves["n"] == 2:  # the first save fits, the second does not
                return _FillsUp(path, "w")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(fileio, "open", open_on_a_filling_disk, raising=False)
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"error: could not save the checkpoint to {out / 'ckpt.pt'} (No space left "
                   f"on device); the last good checkpoint is {out / 'ckpt.pt'} (iter 10); fix "
                   f"that and resume with --init_from=resume\n")
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == 10
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "log.jsonl",
                                                     "train_config.json"]  # no temp, no lock


def test_a_save_into_a_vanished_or_read_only_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match=f"could not save the checkpoint to "
                                              f"{blocker / 'ckpt.pt'} \\(") as e:
        save_checkpoint(blocker / "ckpt.pt", {"model": {}, "model_args": {}})
    assert "\n" not in str(e.value)


def test_log_lines_are_written_whole_or_not_at_all(tmp_path, monkeypatch, caplog):
    log = RunLog(tmp_path, append=False)
    log.write(event="a", value=1)
    real_write = os.write
    monkeypatch.setattr(fileio.os, "write", lambda fd, data: real_write(fd, data[:7]))
    log.write(event="b", value=2)  # a short write: disk full part way through the line
    log.write(event="c", value=3)
    monkeypatch.undo()
    log.write(event="d", value=4)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["a", "d"]
    assert sum("could not write" in r.message for r in caplog.records) == 1


# ---- damaged datasets ----

@pytest.fixture
def small_dataset(tmp_path):
    text = "the quick brown fox jumps over the lazy dog\n" * 50
    write_dataset(tmp_path / "ds", text, CharTokenizer.from_text(text))
    return tmp_path / "ds"


def test_token_ids_beyond_the_vocabulary_are_found_and_named(small_dataset):
    ids = np.fromfile(small_dataset / "train.bin", dtype=np.uint16)
    ids[100] = 500
    ids.tofile(small_dataset / "train.bin")
    with pytest.raises(UserError, match=f"{small_dataset / 'train.bin'} holds token id 500, "
                                        f"but the vocabulary has 28 ids .* data/prepare.py"):
        open_dataset(small_dataset.parent, "ds")


def test_the_token_check_is_remembered_until_the_file_changes(small_dataset, monkeypatch):
    open_dataset(small_dataset.parent, "ds")
    checked = json.loads((small_dataset / CHECKED_NAME).read_text())
    assert checked["train.bin"]["max_id"] == 27
    monkeypatch.setattr(np, "memmap", lambda *a, **k: pytest.fail("read again"))
    open_dataset(small_dataset.parent, "ds")  # same size and mtime: not read again
    monkeypatch.undo()
    ids = np.fromfile(small_dataset / "val.bin", dtype=np.uint16)
    ids[0] = 60000
    ids.tofile(small_dataset / "val.bin")
    with pytest.raises(UserError, match="holds token id 60000"):
        open_dataset(small_dataset.parent, "ds")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-1]),
     "not a whole number .* of uint16 tokens"),
    (lambda d: (d / "meta.json").write_text("{not json"), "meta.json is not valid JSON"),
    (lambda d: (d / "meta.json").write_text('{"vocab_size": 28}'),
     "'tokenizer' must be an object with a 'kind'"),
    (lambda d: (d / "meta.json").write_text('{"tokenizer": {"kind": "char", "chars": []}}'),
     "'vocab_size' must be a whole number >= 1, got None"),
    (lambda d: (d / "meta.json").write_text(
        '{"vocab_size": 3, "tokenizer": {"kind": "char", "chars": ["a", "b"]}}'),
     "the char tokenizer has 2 characters but vocab_size is 3"),
    (lambda d: (d / "meta.json").write_text(
        '{"vocab_size": 70000, "dtype": "uint16", "tokenizer": {"kind": "gpt9"}}'),
     "vocab_size 70000 does not fit the uint16 token ids"),
    (lambda d: (d / "meta.json").write_text('{"vocab_size": 5, "tokenizer": {"kind": "gpt9"}}'),
     "unknown tokenizer kind 'gpt9'"),
])
def test_damaged_datasets_are_one_line_errors_naming_the_file_and_the_fix(small_dataset,
                                                                          damage, message):
    damage(small_dataset)
    with pytest.raises(UserError, match=message) as e:
        open_dataset(small_dataset.parent, "ds")
    assert str(small_dataset) in str(e.value) and "\n" not in str(e.value)
    assert f"--out {small_dataset}" in str(e.value)


def test_train_refuses_bad_ids_before_touching_out_dir(small_dataset, tmp_path, capsys):
    ids = np.fromfile(small_dataset / "val.bin", dtype=np.uint16)
    ids[-1] = 65535
    ids.tofile(small_dataset / "val.bin")
    out = tmp_path / "out"
    assert train_main(tiny_args(small_dataset.parent, out, dataset="ds")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds token id 65535" in err and err.count("\n") == 1
    assert not out.exists()


# ---- damaged or foreign checkpoints ----

@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"PK\x03\x04" + os.urandom(100)],
                         ids=["random bytes", "empty", "broken zip"])
def test_a_foreign_checkpoint_is_one_line_without_unsafe_advice(tmp_path, content, capsys):
    from nanogpt.cli import sample_main

    (tmp_path / "ckpt.pt").write_bytes(content)
    assert sample_main(["--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'ckpt.pt'} is damaged, or not a nanogpt "
                          f"checkpoint (")
    assert err.count("\n") == 1 and "weights_only" not in err and "pickle" not in err.lower()


def _checkpoint_of_another_kind(kind: str) -> dict:
    """A checkpoint torch loads safely that nanogpt's model cannot take."""
    import dataclasses

    from tests.conftest import tiny_gpt

    model = tiny_gpt()
    args = dataclasses.asdict(model.config)
    state = model.state_dict()
    tokenizer = {"kind": "char", "chars": [chr(65 + i) for i in range(37)]}
    if kind == "nanoGPT's":  # karpathy/nanoGPT: its model_args, no tokenizer
        keep = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
        return {"model": state, "model_args": {k: args[k] for k in keep}, "iter_num": 5,
                "best_val_loss": 3.0, "config": {"dataset": "shakespeare_char"}}
    if kind == "unknown model setting":  # another version's
        return {"model": state, "model_args": {**args, "n_kv_head": 1}, "tokenizer": tokenizer}
    state.pop("transformer.h.1.mlp.c_fc.weight")
    return {"model": state, "model_args": args, "tokenizer": tokenizer}


@pytest.mark.parametrize("kind, why", [
    ("nanoGPT's", "is damaged, or not a nanogpt checkpoint (it holds no tokenizer)"),
    ("unknown model setting", "is damaged, or not a nanogpt checkpoint (its model_args are not "
                              "this nanogpt's: GPTConfig.__init__() got an unexpected keyword "
                              "argument 'n_kv_head')"),
    ("missing weight", "the checkpoint's weights do not fit its model_args: Error(s) in "
                       "loading state_dict for GPT: Missing key(s) in state_dict: "
                       '"transformer.h.1.mlp.c_fc.weight"'),
])
def test_a_checkpoint_of_another_program_or_version_is_one_line(tmp_path, kind, why, capsys):
    import torch

    from nanogpt.cli import export_main, sample_main

    torch.save(_checkpoint_of_another_kind(kind), tmp_path / "ckpt.pt")
    before = (tmp_path / "ckpt.pt").read_bytes()
    assert sample_main(["--out_dir", str(tmp_path), "--max_new_tokens=2"]) == 2
    assert export_main(["--out_dir", str(tmp_path), "--to", str(tmp_path / "hf")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") and why in e for e in errors)
    assert (tmp_path / "ckpt.pt").read_bytes() == before and not (tmp_path / "hf").exists()


def test_resume_from_a_damaged_checkpoint_leaves_it_alone(data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"\x80\x02garbage" * 100)
    with pytest.raises(CheckpointError, match="is damaged, or not a nanogpt checkpoint"):
        train(parse_args(tiny_args(data_dir, out, init_from="resume")))
    assert (out / "ckpt.pt").read_bytes() == b"\x80\x02garbage" * 100
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt"]
