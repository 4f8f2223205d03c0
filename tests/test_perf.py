"""Performance-related behaviour: dtype and thread defaults, fused AdamW, activation
checkpointing, the bench table, and the loss-vs-time plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_args

from nanogpt import bench, device, plot
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig

# ---- dtype auto ----

@pytest.mark.parametrize("fast_bf16, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_cpu_follows_bf16_matrix_units(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert device.resolve_dtype("auto", "cpu") == expected


def test_explicit_dtype_wins_over_auto_on_cpu(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.resolve_dtype("float32", "cpu") == "float32"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(UserError, match="float16"):
        device.resolve_dtype("float16", "cpu")


@pytest.mark.parametrize("flags, expected", [
    ("fpu avx2 fma", False), ("avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)])
def test_cpu_has_fast_bf16_reads_cpuinfo_flags(monkeypatch, tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    real_open = open
    monkeypatch.setattr(device, "open", lambda path, *a, **k: real_open(
        cpuinfo if path == "/proc/cpuinfo" else path, *a, **k), raising=False)
    monkeypatch.delenv("NANOGPT_CPU_BF16", raising=False)
    device._cpu_bf16_flags.cache_clear()  # read once per process: read this file now
    try:
        assert device.cpu_has_fast_bf16() is expected
        cpuinfo.write_text("processor : 0\nflags : " + ("fpu" if expected else "amx_bf16"))
        assert device.cpu_has_fast_bf16() is expected  # read once: the answer is kept
    finally:
        device._cpu_bf16_flags.cache_clear()  # the real file again for the tests after this
    monkeypatch.setenv("NANOGPT_CPU_BF16", "0" if expected else "1")  # runs as the other kind
    assert device.cpu_has_fast_bf16() is not expected


def test_parameters_stay_float32_under_bf16_autocast():
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(16, (2, 8))
    with device.autocast("cpu", "bfloat16"):
        logits, loss = model(x, x)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())


# ---- threads ----

def test_num_threads_option_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.default_num_threads(5) == 5


def test_more_threads_than_cpus_is_refused_before_torch_sees_them(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    set_calls = []
    monkeypatch.setattr(torch, "set_num_threads", set_calls.append)
    with pytest.raises(UserError, match=r"num_threads \(100000\) is more than the 4 CPUs of "
                                        r"this machine; use --num_threads=4 or less"):
        device.set_num_threads(100000)
    device.set_num_threads(4)
    assert set_calls == [4]


def test_omp_num_threads_is_left_to_torch(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert device.default_num_threads(0) is None


def test_default_threads_capped_by_cpu_affinity(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert device.default_num_threads(0) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert device.default_num_threads(0) == 8


def test_train_uses_num_threads(data_dir, tmp_path):
    from nanogpt.config import parse_args
    from nanogpt.trainer import train

    train(parse_args(tiny_args(data_dir, tmp_path / "out", max_iters=2, num_threads=1)))
    assert torch.get_num_threads() == 1  # conftest restores it afterwards


def test_omp_num_threads_reaches_training(data_dir, tmp_path):
    code = ("import sys, torch; from nanogpt.config import parse_args; "
            "from nanogpt.trainer import train; train(parse_args(sys.argv[1:])); "
            "print('threads', torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MKL_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", code,
                           *tiny_args(data_dir, tmp_path / "out", max_iters=1)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "threads 1" in proc.stdout


# ---- optimizer and attention ----

def test_cpu_adamw_is_fused_and_matches_the_loop():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16))
    reference = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16))
    reference.load_state_dict(model.state_dict())
    fused = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
    assert fused.defaults.get("fused") is True
    loop = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                              for g in reference.configure_optimizers(
                                  0.1, 1e-2, (0.9, 0.99), "mps").param_groups],
                             lr=1e-2, betas=(0.9, 0.99), foreach=False)
    x = torch.randint(16, (4, 8))
    for _ in range(3):
        for m, opt in ((model, fused), (reference, loop)):
            m(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # 0.2% of one lr=1e-2 step


@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_activation_checkpointing_keeps_loss_and_gradients(recipe):
    from tests.test_modern import MODERN, modern_gpt

    model = modern_gpt(MODERN if recipe == "modern" else {}, dropout=0.2).train()
    x = torch.randint(16, (3, 16))
    results = []
    for recompute in (False, True):
        model.config.activation_checkpointing = recompute
        model.zero_grad()
        torch.manual_seed(3)
        _, loss = model(x, x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


# ---- bench ----

def test_bench_argv_split_and_variant_grid():
    flags, compares, rest = bench.split_bench_argv(
        ["--config", "c.py", "--iters=5", "--compare", "dtype=float32,bfloat16",
         "--compare=compile=False,True", "--batch_size=4"])
    assert flags["iters"] == 5 and flags["warmup"] == bench.BENCH_FLAGS["warmup"]
    assert rest == ["--config", "c.py", "--batch_size=4"]
    grid = bench.variant_grid(compares)
    assert len(grid) == 4 and {"dtype": "bfloat16", "compile": "True"} in grid
    assert bench.variant_grid([]) == [{}]
    with pytest.raises(ValueError, match="KEY=V1"):
        bench.variant_grid(["dtype"])


def test_bench_table_shows_speed_fraction_of_peak_and_errors():
    ok = {"ms_per_iter": 50.0, "tokens_per_s": 15360.0, "flops_per_s": 70e9,
          "peak_flops": 140e9, "peak_rss_mb": 400.0, "first_step_s": 0.5, "paths": ["bmm"],
          "dtype": "bfloat16"}
    rows = bench.table_rows([({"attention": "auto"}, ok), ({"attention": "manual"},
                                                            {"error": "boom"})])
    assert rows[0] == ["attention=auto", "bmm, bfloat16", "50.0", "15,360", "70.0", "50.0",
                       "400", "0.5"]
    assert rows[1][1] == "failed: boom"
    text = bench.format_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| variant") and len({len(line) for line in lines}) == 1


@pytest.mark.slow
def test_bench_compares_variants_in_subprocesses(data_dir, capsys):
    args = [a for a in tiny_args(data_dir, "unused") if not a.startswith("--out_dir")]
    code = bench.main(args + ["--iters=2", "--warmup=1", "--compare", "attention=auto,manual"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MFLOP/token" in out
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
            if line.startswith("| attention=")}
    # tiny attention is not timed: auto takes the rule, the fused kernel
    assert rows == {"attention=auto": "flash, float32", "attention=manual": "manual, float32"}


# ---- log and plot ----

def test_eval_log_records_elapsed_seconds(data_dir, tmp_path):
    from nanogpt.config import parse_args
    from nanogpt.trainer import train

    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=4, eval_interval=2)))
    evals = plot.read_evals(out / "log.jsonl")
    assert [r["iter"] for r in evals] == [0, 2, 4]
    elapsed = [r["elapsed"] for r in evals]
    assert 0 <= elapsed[0] <= elapsed[1] <= elapsed[2]


def test_read_evals_derives_elapsed_from_time_in_old_logs(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"event": "eval", "iter": 0, "train_loss": 4.0, "val_loss": 4.1, "time": 100.0},
        {"event": "train", "iter": 0, "loss": 4.0},
        {"event": "eval", "iter": 10, "train_loss": 3.0, "val_loss": 3.2, "time": 112.5}]))
    assert [r["elapsed"] for r in plot.read_evals(log)] == [0.0, 12.5]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps({"event": "eval", "iter": 0, "train_loss": 4.0, "val_loss": 4.1,
                               "time": 1.0, "elapsed": 0.5}) + "\n")
    out = tmp_path / "docs" / "curve.png"
    assert plot.main([str(log), "-o", str(out), "--target", "1.88"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
