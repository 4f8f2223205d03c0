"""The training loop in-process: schedule, checkpoints, resume, NaN guard."""

import os
import signal
from fractions import Fraction

import pytest
import torch

from nanogpt import fileio
from nanogpt.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointError,
    TrainState,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from nanogpt.config import TrainConfig, parse_args
from nanogpt.errors import TrainingStopped, UserError
from nanogpt.model import GPT
from nanogpt.trainer import TrainingDiverged, get_lr, train
from tests.conftest import read_log, tiny_args, tiny_gpt


def test_lr_schedule_warmup_peak_cosine_floor():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110,
                      max_iters=200)
    assert 0 < get_lr(0, cfg) < get_lr(5, cfg) < get_lr(9, cfg) < 1.0
    assert get_lr(10, cfg) == pytest.approx(1.0)
    assert get_lr(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert get_lr(110, cfg) == pytest.approx(0.1) and get_lr(150, cfg) == 0.1
    assert all(get_lr(i, cfg) >= get_lr(i + 1, cfg) for i in range(10, 150))
    assert get_lr(5, TrainConfig(decay_lr=False, learning_rate=0.3, min_lr=0.0)) == 0.3


def test_tiny_run_learns_and_writes_checkpoint_and_log(data_dir, tmp_path):
    out = tmp_path / "out"
    result = train(parse_args(tiny_args(data_dir, out, max_iters=40, eval_interval=20)))
    assert result.iter_num == 40
    evals = read_log(out, "eval")
    assert [e["iter"] for e in evals] == [0, 20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["iter_num"] == 40 and ckpt["config"]["n_embd"] == 32
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert len(read_log(out, "train")) == 40


def assert_same(a, b, where="checkpoint"):
    """Equal dicts / lists / tensors / values, recursively, tensors bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("lora", [False, True])
def test_train_state_save_and_restore_are_symmetric(tmp_path, lora):
    """Every field and tensor of a trained state survives save -> load -> restore; for a
    LoRA state, the adapters (the frozen base is rebuilt from where the checkpoint names)."""
    from nanogpt.lora import adapter_state_dict, add_adapters

    def model_of(seed: int):
        model = tiny_gpt(seed=seed if not lora else 0, dropout=0.1)
        if lora:  # the same base; adapters drawn from seed
            torch.manual_seed(seed)
            add_adapters(model, 4, 8.0, ["c_attn", "mlp.c_proj"], dropout=0.1)
        return model

    model = model_of(0)
    info = {"rank": 4, "alpha": 8.0, "targets": ["c_attn", "mlp.c_proj"], "base": "gpt2",
            "base_sha256": "0" * 64} if lora else None
    state = TrainState(model, model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu"),
                       iter_num=7, best_val_loss=1.25, elapsed=3.5, config={"n_layer": 2},
                       tokenizer={"kind": "char", "chars": list("abc")}, pretrained="gpt2",
                       tokens_seen=7 * 64, lora=info)
    x = torch.randint(0, 37, (4, 16))
    for _ in range(3):  # optimizer moments and step counts worth restoring
        state.model(x, x)[1].backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
    torch.rand(5)  # move the RNG away from its seed
    saved = state.to_checkpoint()
    assert set(saved) == set(CHECKPOINT_KEYS)
    if lora:
        assert saved["model"].keys() == adapter_state_dict(model).keys()
    save_checkpoint(tmp_path / "ckpt.pt", saved)

    fresh = model_of(1)
    restored = TrainState(fresh, fresh.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu"),
                          config={"n_layer": 2})
    torch.manual_seed(123)
    restored.restore(load_checkpoint(tmp_path / "ckpt.pt"))
    assert_same(restored.to_checkpoint(), saved)  # rng included: restore set it back
    assert_same(fresh.state_dict(), model.state_dict(), "model")


def test_the_trained_model_in_memory_is_the_one_on_disk(data_dir, tmp_path):
    out = tmp_path / "out"
    result = train(parse_args(tiny_args(data_dir, out, max_iters=10, eval_interval=10,
                                        dropout=0.1)))
    model, tok = load_model(out)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert result.iter_num == load_checkpoint(out / "ckpt.pt")["iter_num"] == 10
    assert tok.decode(tok.encode("ROMEO:")) == "ROMEO:"


@pytest.mark.parametrize("batch_split", [1, 2])
def test_resume_continues_exactly(data_dir, tmp_path, batch_split):
    """Straight 30 steps == 15 steps, stop, resume to 30: same losses, same weights, with
    dropout, and with each batch in chunks."""
    common = dict(max_iters=30, eval_interval=5, dropout=0.1, always_save_checkpoint=True,
                  batch_split=batch_split)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args(tiny_args(data_dir, straight, **common)))
    train(parse_args(tiny_args(data_dir, split, **{**common, "max_iters": 15})))
    train(parse_args(tiny_args(data_dir, split, **common, init_from="resume")))
    losses = lambda d: [(r["iter"], r["loss"]) for r in read_log(d, "train")]  # noqa: E731
    assert losses(straight) == losses(split)
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_refuses_a_different_model_shape(data_dir, tmp_path):
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=5, eval_interval=5)))
    before = (out / "ckpt.pt").read_bytes()
    with pytest.raises(UserError, match=r"n_embd=64 \(checkpoint has 32\)"):
        train(parse_args(tiny_args(data_dir, out, n_embd=64, init_from="resume")))
    # settings that may change on resume are fine
    train(parse_args(tiny_args(data_dir, out, init_from="resume", max_iters=8,
                               learning_rate=1e-3, eval_interval=4)))
    assert (out / "ckpt.pt").read_bytes() != before


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data_dir, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real_forward = GPT.forward

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 13:  # the 13th training step
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        train(parse_args(tiny_args(data_dir, out, max_iters=20, eval_interval=10)))
    assert "loss is nan at iter 12" in str(e.value)
    assert f"{out / 'ckpt.pt'} (iter 10)" in str(e.value)
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["iter_num"] == 10
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "model_args": {}, "iter_num": 1,
                           "tokenizer": {"kind": "char", "chars": ["a"]}})

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(CheckpointError, match=f"could not save the checkpoint to {path} "
                                              f"\\(disk full\\)"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "model_args": {}, "iter_num": 2})
    assert load_checkpoint(path)["iter_num"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_is_a_one_line_error(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}, "model_args": {}})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_checkpoints_refuse_pickled_objects(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "model_args": {}, "evil": Fraction(1, 3)}, path)  # needs pickle
    with pytest.raises(CheckpointError, match="cannot be loaded safely|damaged"):
        load_checkpoint(path)


def test_every_checkpoint_field_loads_with_weights_only(data_dir, tmp_path):
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=4, eval_interval=2)))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "model_args", "config", "tokenizer", "iter_num",
            "best_val_loss", "rng"} <= set(ckpt)


def _poison_step(monkeypatch, at_call: int, action):
    """Run action(model) inside the at_call-th training forward."""
    calls = {"n": 0}
    real_forward = GPT.forward

    def forward(self, idx, targets=None, **kw):
        if self.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                action(self)
        return real_forward(self, idx, targets, **kw)

    monkeypatch.setattr(GPT, "forward", forward)


def test_non_finite_gradient_stops_training_even_without_clipping(data_dir, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "out"
    _poison_step(monkeypatch, 8, lambda m: m.lm_head.weight.register_hook(
        lambda g: g * float("inf")))
    with pytest.raises(TrainingDiverged, match="gradient norm is (inf|nan) at iter 7"):
        train(parse_args(tiny_args(data_dir, out, max_iters=20, eval_interval=5, grad_clip=0)))
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == 5


@pytest.mark.parametrize("always_save", [True, False])
def test_sigterm_saves_without_replacing_the_best_checkpoint(data_dir, tmp_path, monkeypatch,
                                                             always_save):
    out = tmp_path / "out"
    _poison_step(monkeypatch, 13, lambda m: os.kill(os.getpid(), signal.SIGTERM))
    args = tiny_args(data_dir, out, max_iters=30, eval_interval=10,
                     always_save_checkpoint=always_save)
    with pytest.raises(TrainingStopped) as e:
        train(parse_args(args))
    assert e.value.exit_code == 128 + signal.SIGTERM
    stopped = "ckpt.pt" if always_save else "last.pt"
    assert f"checkpoint saved to {out / stopped} at iter 13" in str(e.value)
    assert load_checkpoint(out / stopped)["iter_num"] == 13
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == (13 if always_save else 10)
    monkeypatch.undo()
    result = train(parse_args(args + ["--init_from=resume"]))  # takes the newer file
    assert result.iter_num == 30
    resumes = read_log(out, "resume")
    assert resumes == [{"event": "resume", "iter": 13, "checkpoint": str(out / stopped)}]


def test_sigterm_during_an_evaluation_saves_at_once_and_resumes_exactly(data_dir, tmp_path,
                                                                        monkeypatch):
    """A signal mid-evaluation does not wait for the rest of it (a scheduler's grace period
    can be shorter than a CPU evaluation): the run saves where it stands, and the resume
    evaluates that step again, as the straight run did."""
    common = dict(max_iters=20, eval_interval=10, eval_iters=6)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(parse_args(tiny_args(data_dir, straight, **common)))
    evals = {"n": 0, "after_signal": 0}
    real_forward = GPT.forward

    def forward(self, idx, targets=None, **kw):
        if not self.training:
            evals["n"] += 1
            if evals["n"] == 2 * 6 + 3:  # the third batch of the evaluation at iter 10
                os.kill(os.getpid(), signal.SIGTERM)
            elif evals["n"] > 2 * 6 + 3:
                evals["after_signal"] += 1
        return real_forward(self, idx, targets, **kw)

    monkeypatch.setattr(GPT, "forward", forward)
    with pytest.raises(TrainingStopped, match="at iter 10;") as e:
        train(parse_args(tiny_args(data_dir, stopped, **common)))
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert evals["after_signal"] == 0  # not one more evaluation batch
    assert load_checkpoint(stopped / "ckpt.pt")["iter_num"] == 10
    assert [r["iter"] for r in read_log(stopped, "eval")] == [0]  # the cut one is not logged
    monkeypatch.undo()
    train(parse_args(tiny_args(data_dir, stopped, **common, init_from="resume")))
    for what in ("train", "eval"):
        want = [{k: v for k, v in r.items() if k not in ("ms", "tok_per_s", "time", "elapsed")}
                for r in read_log(straight, what)]
        got = [{k: v for k, v in r.items() if k not in ("ms", "tok_per_s", "time", "elapsed")}
               for r in read_log(stopped, what)]
        assert got == want, what
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(stopped / "ckpt.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_sigterm_during_the_evaluation_sample_saves_at_once_and_resumes_exactly(
        data_dir, tmp_path, monkeypatch):
    """A signal while the evaluation's sample is being generated (sample_tokens can make it
    long) stops the sample at the next token and saves; log.jsonl keeps nothing of that
    evaluation, and the resume evaluates and samples it again, as the straight run did."""
    from nanogpt import sampling

    common = dict(max_iters=20, eval_interval=10, sample_tokens=40)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(parse_args(tiny_args(data_dir, straight, **common)))
    drawn = {"n": 0}
    real_sample_next = sampling.sample_next

    def sample_next(*args, **kwargs):
        drawn["n"] += 1
        if drawn["n"] == 5:  # the fifth token of the first sample (step 10)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_sample_next(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample_next", sample_next)
    with pytest.raises(TrainingStopped, match="at iter 10;") as e:
        train(parse_args(tiny_args(data_dir, stopped, **common)))
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert drawn["n"] <= 6  # not the 40 tokens
    assert [r["iter"] for r in read_log(stopped, "eval")] == [0]
    assert read_log(stopped, "sample") == []
    monkeypatch.undo()
    train(parse_args(tiny_args(data_dir, stopped, **common, init_from="resume")))
    for what in ("train", "eval", "sample"):
        drop = ("ms", "tok_per_s", "time", "elapsed", "seconds")
        want = [{k: v for k, v in r.items() if k not in drop} for r in read_log(straight, what)]
        got = [{k: v for k, v in r.items() if k not in drop} for r in read_log(stopped, what)]
        assert got == want and want, what


def test_eval_only_stopped_mid_evaluation_saves_nothing(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=10)))
    before = (out / "ckpt.pt").read_bytes()
    monkeypatch.setattr(GPT, "forward", _signal_at_first_eval_forward(GPT.forward))
    with pytest.raises(TrainingStopped, match="eval_only saves nothing") as e:
        train(parse_args(tiny_args(data_dir, out, init_from="resume", eval_only=True,
                                   eval_iters=4)))
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert (out / "ckpt.pt").read_bytes() == before


def _signal_at_first_eval_forward(real_forward):
    def forward(self, idx, targets=None, **kw):
        if not self.training and not getattr(forward, "sent", False):
            forward.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return real_forward(self, idx, targets, **kw)
    return forward


def test_second_ctrl_c_aborts_at_once(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def two_interrupts(model):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    _poison_step(monkeypatch, 3, two_interrupts)
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's
    with pytest.raises(KeyboardInterrupt):
        train(parse_args(tiny_args(data_dir, out, max_iters=30, eval_interval=10)))
    assert not (out / "ckpt.pt").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored


def test_eval_only_evaluates_and_changes_no_checkpoint(data_dir, tmp_path):
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=10, eval_interval=10)))
    before = (out / "ckpt.pt").read_bytes()
    result = train(parse_args(tiny_args(data_dir, out, init_from="resume", eval_only=True)))
    assert result.iter_num == 10
    assert set(result.losses) == {"train", "val", "train_bpb", "val_bpb"}
    assert (out / "ckpt.pt").read_bytes() == before
    assert read_log(out, "eval")[-1]["iter"] == 10


# ---- batch_split: a micro-batch in equal chunks ----

def test_batch_split_gives_the_same_training_as_one_chunk(data_dir, tmp_path):
    """Chunks of 3, 3 and 2 sequences == 1 chunk of 8: the same losses and weights (fp32
    rounding), so unequal chunks are weighted by their share of the batch."""
    runs = {}
    for split in (1, 3):
        out = tmp_path / f"split{split}"
        train(parse_args(tiny_args(data_dir, out, max_iters=8, eval_interval=4,
                                   batch_split=split)))
        runs[split] = (read_log(out, "train"), read_log(out, "eval"),
                       load_checkpoint(out / "ckpt.pt")["model"])
    (train1, eval1, w1), (train3, eval3, w3) = runs[1], runs[3]
    assert [r["loss"] for r in train3] == pytest.approx([r["loss"] for r in train1], rel=1e-5)
    assert [r["val_loss"] for r in eval3] == pytest.approx([r["val_loss"] for r in eval1],
                                                           rel=1e-5)
    for k in w1:
        torch.testing.assert_close(w3[k], w1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size, block_size, device, setting, chunks", [
    (64, 256, "cpu", 0, 8),      # the baby GPT: 8 chunks of 8 x 256 = 2048 tokens
    (12, 64, "cpu", 0, 1),       # the CPU config is small already
    (13, 256, "cpu", 0, 2),      # chunks of 7 and 6 sequences, not 13 of one
    (10, 500, "cpu", 0, 3),      # 4, 3 and 3 sequences
    (5, 4096, "cpu", 0, 5),      # one sequence is longer than a chunk: one per chunk
    (64, 256, "cuda", 0, 1),     # GPUs run the whole batch
    (64, 256, "cpu", 2, 2),      # an explicit value wins
])
def test_batch_split_auto(batch_size, block_size, device, setting, chunks):
    from nanogpt.trainer import resolve_batch_split

    cfg = TrainConfig(batch_size=batch_size, block_size=block_size, batch_split=setting)
    assert resolve_batch_split(cfg, device) == chunks


def test_steps_between_log_intervals_never_wait_for_the_device(data_dir, tmp_path,
                                                                monkeypatch):
    """Reading a tensor's value (.item(), .tolist(), float(), int(), bool()) makes the host
    wait for the device; training does it only at log intervals, evaluations and saves."""
    from nanogpt import trainer

    reads: dict[int, int] = {}
    current = {"it": -1}
    real_get_lr = trainer.get_lr

    def get_lr(it, cfg):  # called once at the start of each step
        current["it"] = it
        return real_get_lr(it, cfg)

    monkeypatch.setattr(trainer, "get_lr", get_lr)
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, **k):
            reads[current["it"]] = reads.get(current["it"], 0) + 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    train(parse_args(tiny_args(data_dir, tmp_path / "out", max_iters=20, eval_interval=10,
                               log_interval=5, dropout=0.1, batch_split=2,
                               gradient_accumulation_steps=2)))
    monkeypatch.undo()
    logged = {it for it in range(20) if (it + 1) % 5 == 0}
    assert set(reads) - {-1} <= logged, reads  # -1: set-up and the first evaluation
    assert all(reads.get(it) for it in logged)  # the counting sees the reads that do happen
