"""torchrun DDP on CPU (gloo): the same run on 2 ranks and on 1, failures, signals, resume.

Every test launches real processes with `python -m torch.distributed.run`, so they are slow.
Hooks that make rank 1 fail, or send SIGTERM to torchrun, live in a small wrapper script in
the test's tmp dir that patches nanogpt and then runs the ordinary train_main().
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, SHAKESPEARE, read_log, run_script, tiny_args

pytestmark = pytest.mark.slow

# lr_decay_iters is fixed in tiny_args, so max_iters does not change the lr schedule and a
# run stopped early continues on the same schedule when resumed.
# batch_split 2: each micro-batch runs as 2 chunks, so gradients sync after the last chunk only
SETTINGS = {"max_iters": 8, "eval_interval": 4, "batch_size": 4, "batch_split": 2,
            "dropout": 0.1}
LAUNCH_TIMEOUT = 90  # seconds; a hung rank would otherwise hold the test forever

HOOK_HEADER = """import os, signal, sys, time
from nanogpt import data
from nanogpt.cli import train_main

real_get_batch = data.BatchSampler.get_batch
"""


def torchrun(args: list[str], script: Path = ROOT / "train.py", nproc: int = 2
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("NANOGPT_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=LAUNCH_TIMEOUT, check=False)


def hook_script(tmp_path: Path, body: str) -> Path:
    """A train.py that first patches BatchSampler.get_batch with `body` (indented code that
    sees self, step, micro_step and returns a batch)."""
    path = tmp_path / "train_with_hook.py"
    path.write_text(HOOK_HEADER + "\ndef get_batch(self, step, micro_step=0):\n" + body
                    + "\n\ndata.BatchSampler.get_batch = get_batch\nsys.exit(train_main())\n")
    return path


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=True)["model"]


def fresh_data_dir(tmp_path: Path) -> Path:
    """Only input.txt: rank 0 must prepare the dataset while rank 1 waits for it."""
    ds = tmp_path / "data" / "shakespeare_char"
    ds.mkdir(parents=True)
    shutil.copy(SHAKESPEARE, ds / "input.txt")
    return ds.parent


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path, float]:
    """(data_dir, out_dir, seconds) of a 2-rank run of SETTINGS, 2 micro-steps per rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    data_dir, out = fresh_data_dir(tmp), tmp / "out"
    t0 = time.perf_counter()
    r = torchrun(tiny_args(data_dir, out, gradient_accumulation_steps=2, **SETTINGS))
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return data_dir, out, seconds


def test_two_ranks_train_like_one_with_double_accumulation(ddp_run, tmp_path):
    data_dir, ddp_out, _ = ddp_run
    single_out = tmp_path / "single"
    r = run_script("train.py", tiny_args(data_dir, single_out, gradient_accumulation_steps=4,
                                         **SETTINGS), timeout=LAUNCH_TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    ddp, single = weights(ddp_out), weights(single_out)
    assert ddp.keys() == single.keys()
    for name in single:  # same samples and dropout masks; only the summation order differs
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
    ddp_train = [e["loss"] for e in read_log(ddp_out, "train")]
    single_train = [e["loss"] for e in read_log(single_out, "train")]
    assert ddp_train == pytest.approx(single_train, rel=1e-5)  # the global loss, not rank 0's
    ddp_eval = [e["val_loss"] for e in read_log(ddp_out, "eval")]
    assert ddp_eval == pytest.approx([e["val_loss"] for e in read_log(single_out, "eval")],
                                     rel=1e-5)


def test_only_rank_zero_writes(ddp_run):
    _, out, _ = ddp_run
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.endswith(".pt")] == ["ckpt.pt"]
    assert not [n for n in names if n.startswith(".") or "tmp" in n]  # no half-written files
    assert [e["iter"] for e in read_log(out, "train")] == list(range(SETTINGS["max_iters"]))
    assert [e["iter"] for e in read_log(out, "checkpoint")] == [4, 8]
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 8


def test_sigterm_stops_every_rank_then_resume_continues_exactly(ddp_run, tmp_path):
    data_dir, full_out, _ = ddp_run
    out = tmp_path / "out"
    # rank 0 sends SIGTERM to torchrun during step 3 and lingers until torchrun has passed
    # it on to both ranks, so the run stops after step 3 (iter 4) on every rank
    script = hook_script(tmp_path, """\
    if os.environ["RANK"] == "0" and step == 3 and micro_step == 0 and self.seed == 1337:
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(2)
    return real_get_batch(self, step, micro_step)""")
    args = tiny_args(data_dir, out, gradient_accumulation_steps=2,
                     **{**SETTINGS, "max_iters": 1000})
    t0 = time.perf_counter()
    r = torchrun(args, script)
    stopped_after = time.perf_counter() - t0
    assert r.returncode != 0
    assert "stopped by SIGTERM" in r.stderr
    assert "Unable to shutdown process" not in r.stderr  # no rank needed SIGKILL
    assert "terminate called" not in r.stderr  # no rank left gloo while another still saved
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 4
    assert read_log(out, "checkpoint")[-1] == {"event": "checkpoint", "iter": 4,
                                             "reason": "signal", "path": str(out / "ckpt.pt")}

    r = torchrun(tiny_args(data_dir, out, gradient_accumulation_steps=2, init_from="resume",
                           **SETTINGS))
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, full = weights(out), weights(full_out)
    for name in full:
        assert torch.equal(resumed[name], full[name]), name
    assert [e["iter"] for e in read_log(out, "train")] == list(range(8))
    assert stopped_after < LAUNCH_TIMEOUT


def test_a_failing_rank_ends_the_whole_job(ddp_run, tmp_path):
    data_dir, _, ddp_seconds = ddp_run
    script = hook_script(tmp_path, """\
    if os.environ["RANK"] == "1" and step == 3:
        raise RuntimeError("injected failure on rank 1")
    return real_get_batch(self, step, micro_step)""")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    r = torchrun(tiny_args(data_dir, out, **{**SETTINGS, "max_iters": 100000}), script)
    seconds = time.perf_counter() - t0
    assert r.returncode != 0
    assert "injected failure on rank 1" in r.stderr
    # rank 0 was waiting for rank 1 in a collective: it must fail too, not wait for torchrun's
    # SIGKILL 30 s later (nor train on alone for 100000 steps)
    assert "Unable to shutdown process" not in r.stderr
    assert seconds < ddp_seconds + 20, r.stderr[-3000:]


def test_the_modern_recipe_on_two_ranks_trains_like_one(ddp_run, tmp_path):
    """RoPE, RMSNorm, QK-norm, ReLU^2, untied head, soft-cap, Muon, WSD and epoch batches:
    2 ranks x 2 micro-steps == 1 process x 4, as for GPT-2."""
    from tests.test_modern import MODERN_TRAINING

    data_dir = ddp_run[0]
    settings = {**SETTINGS, **MODERN_TRAINING}
    outs = two_ranks_and_one(data_dir, tmp_path, settings)
    ddp, single = weights(outs["ddp"]), weights(outs["single"])
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert [e["loss"] for e in read_log(outs["ddp"], "train")] == pytest.approx(
        [e["loss"] for e in read_log(outs["single"], "train")], rel=1e-5)


def test_lora_on_two_ranks_trains_like_one(ddp_run, tmp_path):
    """LoRA adapters on a frozen run (the DDP fixture's): 2 ranks x 2 micro-steps == 1
    process x 4, with dropout on the adapters; only the adapters are synced and saved."""
    data_dir, base, _ = ddp_run
    settings = {**SETTINGS, "init_from": str(base), "finetune": "lora", "lora_dropout": 0.1,
                "learning_rate": 1e-2, "sample_tokens": 8}
    outs = two_ranks_and_one(data_dir, tmp_path, settings)
    ddp, single = weights(outs["ddp"]), weights(outs["single"])
    assert ddp.keys() == single.keys() and all(k.endswith(("lora_A", "lora_B")) for k in ddp)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [e["loss"] for e in read_log(outs["ddp"], "train")] == pytest.approx(
        [e["loss"] for e in read_log(outs["single"], "train")], rel=1e-5)
    assert [e["text"] for e in read_log(outs["ddp"], "sample")] == \
        [e["text"] for e in read_log(outs["single"], "sample")]


def test_a_time_budget_on_two_ranks_ends_together(ddp_run, tmp_path):
    """Each rank times its own steps; they must still agree on one plan, or one would wait
    for the other in a collective at the end."""
    out = tmp_path / "out"
    r = torchrun(tiny_args(ddp_run[0], out, **{**SETTINGS, "max_iters": 100000,
                                               "lr_decay_iters": None, "time_budget": 12,
                                               "lr_schedule": "wsd", "eval_interval": 1000}))
    assert r.returncode == 0, r.stderr[-3000:]
    plans = read_log(out, "plan")
    assert plans and weights(out) and read_log(out, "eval")[-1]["iter"] == plans[-1]["max_iters"]


def two_ranks_and_one(data_dir, tmp_path, settings: dict) -> dict:
    """Train with settings as 2 ranks x 2 micro-steps and as 1 process x 4; their out_dirs."""
    outs = {"ddp": tmp_path / "ddp", "single": tmp_path / "single"}
    r = torchrun(tiny_args(data_dir, outs["ddp"], gradient_accumulation_steps=2, **settings))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_script("train.py", tiny_args(data_dir, outs["single"], gradient_accumulation_steps=4,
                                         **settings), timeout=LAUNCH_TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    return outs
