"""LoRA: adapters on a frozen model, their checkpoints, exact resume, merging and export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import CheckpointError, load_checkpoint, load_model
from nanogpt.config import ConfigError, parse_args
from nanogpt.errors import UserError
from nanogpt.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    adapter_state_dict,
    add_adapters,
    has_adapters,
    merge_adapters,
    parse_targets,
    weights_sha256,
)
from nanogpt.trainer import train
from tests.conftest import read_log, tiny_args, tiny_gpt

TARGETS = parse_targets(DEFAULT_TARGETS)


def randomize_adapters(model, seed: int = 0) -> None:
    """B is zero in a fresh adapter: give it values, so that adapters change the function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---- the adapters ----

def test_adapters_start_as_the_base_and_only_they_get_gradients_and_optimizer_state():
    base = tiny_gpt()
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(0))
    before = base(idx, idx)[0].detach()
    model = add_adapters(tiny_gpt(), rank=4, alpha=8.0, targets=TARGETS)
    assert torch.equal(model(idx, idx)[0], before)  # B = 0: exactly the base
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state_dict(model))
    assert len(trainable) == 2 * 4 * model.config.n_layer  # A and B on 4 layers per block
    assert model.state_dict().keys() - trainable == base.state_dict().keys()  # names kept

    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    model(idx, idx)[1].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    optimizer.step()
    assert set(map(id, optimizer.state)) == {id(p) for n, p in model.named_parameters()
                                             if n in trainable}
    for name, tensor in base.state_dict().items():  # the base did not move
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize("attention", ["flash", "manual", "bmm"])
def test_merged_adapters_compute_the_same_logits(attention):
    model = add_adapters(tiny_gpt(attention=attention), rank=4, alpha=8.0, targets=TARGETS)
    randomize_adapters(model)
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(idx, idx)[0]
        assert (unmerged - tiny_gpt(attention=attention)(idx, idx)[0]).abs().max() > 1e-3
        merged = merge_adapters(model)
        assert not has_adapters(merged)
        assert set(merged.state_dict()) == set(tiny_gpt().state_dict())
        torch.testing.assert_close(merged(idx, idx)[0], unmerged, atol=1e-5, rtol=0)


def test_adapter_gradients_agree_on_every_attention_path():
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(2))
    grads = {}
    for attention in ("flash", "manual", "bmm"):
        torch.manual_seed(5)  # the same A in each model
        model = add_adapters(tiny_gpt(attention=attention), 4, 8.0, TARGETS)
        randomize_adapters(model)
        model(idx, idx)[1].backward()
        grads[attention] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for attention in ("manual", "bmm"):
        for name, grad in grads["flash"].items():
            torch.testing.assert_close(grads[attention][name], grad, atol=1e-6, rtol=1e-4)


def test_the_weights_hash_sees_every_change():
    state = tiny_gpt().state_dict()
    digest = weights_sha256(state)
    assert weights_sha256(tiny_gpt().state_dict()) == digest
    changed = {k: v.clone() for k, v in state.items()}
    changed["transformer.ln_f.bias"][3] += 1e-6
    assert weights_sha256(changed) != digest
    assert weights_sha256({k: v.double() for k, v in state.items()}) != digest


def test_lora_config_mistakes_are_one_line(data_dir, tmp_path):
    base = tiny_args(data_dir, tmp_path / "out")
    for extra, message in ((["--finetune=lora"], "adapts trained weights"),
                           (["--finetune=lora", "--init_from=gpt2", "--optimizer=muon"],
                            "optimizer='adamw'"),
                           (["--finetune=lora", "--init_from=gpt2", "--lora_targets=c_attn,wte"],
                            "unknown layer 'wte'"),
                           (["--finetune=lora", "--init_from=gpt2", "--lora_rank=0"],
                            "lora_rank must be >= 1")):
        with pytest.raises(ConfigError, match=message):
            parse_args(base + extra)


# ---- training: from one of our runs ----

@pytest.fixture(scope="module")
def base_run(data_dir, tmp_path_factory) -> Path:
    """A small char model trained from scratch: the weights LoRA runs adapt."""
    out = tmp_path_factory.mktemp("base") / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=20, eval_interval=20)))
    return out


def lora_args(data_dir, out, base, **overrides) -> list[str]:
    values = dict(init_from=str(base), finetune="lora", lora_rank=4, sample_tokens=16)
    return tiny_args(data_dir, out, **{**values, **overrides})


def test_a_rank_past_the_layers_width_is_refused_before_out_dir_changes(data_dir, tmp_path,
                                                                         base_run):
    out = tmp_path / "out"  # the base is 32 wide: rank 33 would be no adapter but a bigger layer
    with pytest.raises(UserError, match=r"lora_rank \(33\) is more than 32, the smallest width "
                                        r"of the layers it adapts"):
        train(parse_args(lora_args(data_dir, out, base_run, lora_rank=33, max_iters=2)))
    assert not out.exists()
    train(parse_args(lora_args(data_dir, out, base_run, lora_rank=32, max_iters=2)))


def test_lora_run_saves_only_the_adapters_and_names_its_base(data_dir, tmp_path, base_run):
    out = tmp_path / "lora"
    # 40 steps and 20 eval batches: the loss drop (0.026-0.044 over seeds 1-4 and 1337) stands
    # clear of the estimate's noise (20 steps, 2 batches: -0.001 to 0.025)
    result = train(parse_args(lora_args(data_dir, out, base_run, max_iters=40,
                                        lr_decay_iters=40, eval_iters=20)))
    evals = read_log(out, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.015
    ckpt, base = load_checkpoint(out / "ckpt.pt"), load_checkpoint(base_run / "ckpt.pt")
    adapters = set(adapter_state_dict(result.model))
    assert set(ckpt["model"]) == adapters
    assert len(ckpt["optimizer"]["state"]) == len(adapters)  # nothing for frozen weights
    assert ckpt["lora"]["base"] == str(base_run.resolve())
    assert ckpt["lora"]["base_sha256"] == weights_sha256(base["model"])
    assert (ckpt["lora"]["rank"], ckpt["lora"]["targets"]) == (4, TARGETS)
    assert (out / "ckpt.pt").stat().st_size < (base_run / "ckpt.pt").stat().st_size / 3

    model, tok = load_model(out)  # the base with the adapters, as trained
    assert has_adapters(model)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    for name, tensor in base["model"].items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert len(read_log(out, "sample")) == len(evals)


@pytest.mark.parametrize("attention", ["flash", "manual", "bmm"])
def test_lora_resume_continues_exactly(data_dir, tmp_path, base_run, attention):
    """Straight 20 steps == 10, stop, resume to 20: same losses and adapters, with dropout
    in the model and on the adapters' inputs, and samples at every evaluation."""
    common = dict(max_iters=20, eval_interval=5, dropout=0.1, lora_dropout=0.1,
                  attention=attention)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args(lora_args(data_dir, straight, base_run, **common)))
    train(parse_args(lora_args(data_dir, split, base_run, **{**common, "max_iters": 10})))
    train(parse_args(lora_args(data_dir, split, base_run, **common) + ["--init_from=resume"]))
    losses = lambda d: [(r["iter"], r["loss"]) for r in read_log(d, "train")]  # noqa: E731
    assert losses(straight) == losses(split)
    texts = lambda d: {r["iter"]: r["text"] for r in read_log(d, "sample")}  # noqa: E731
    assert texts(straight) == texts(split)
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_or_load_against_other_base_weights_is_refused(data_dir, tmp_path, base_run):
    base = tmp_path / "base"
    shutil.copytree(base_run, base)
    out = tmp_path / "lora"
    args = lora_args(data_dir, out, base, max_iters=5, eval_interval=5)
    train(parse_args(args))
    before = (out / "ckpt.pt").read_bytes()
    # the base run trains on: its ckpt.pt is no longer the weights the adapters were made for
    train(parse_args(tiny_args(data_dir, base, init_from="resume", max_iters=25,
                               eval_interval=25)))
    for attempt in (lambda: train(parse_args(args + ["--init_from=resume",
                                                     "--max_iters=10"])),
                    lambda: load_model(out)):
        with pytest.raises(CheckpointError, match="not those this LoRA run was trained on") as e:
            attempt()
        assert "\n" not in str(e.value) and str(base) in str(e.value)
    shutil.rmtree(base)
    with pytest.raises(CheckpointError, match=f"base weights are gone: {base} does not exist"):
        load_model(out)
    assert (out / "ckpt.pt").read_bytes() == before


def test_resume_refuses_other_adapters_or_a_full_finetune(data_dir, tmp_path, base_run):
    out = tmp_path / "lora"
    args = lora_args(data_dir, out, base_run, max_iters=5, eval_interval=5)
    train(parse_args(args))
    for extra, message in ((["--lora_rank=8"], r"lora_rank=8 \(checkpoint has 4\)"),
                           (["--lora_targets=c_attn"], "lora_targets"),
                           (["--finetune=full"], "the checkpoint is a LoRA finetune")):
        with pytest.raises(UserError, match=message):
            train(parse_args(args + ["--init_from=resume"] + extra))
    # lora_dropout, like dropout, may change
    train(parse_args(args + ["--init_from=resume", "--lora_dropout=0.2", "--max_iters=6"]))


def test_a_full_finetune_starts_from_another_runs_weights(data_dir, tmp_path, base_run):
    result = train(parse_args(tiny_args(data_dir, tmp_path / "full", init_from=str(base_run),
                                        max_iters=0, n_embd=64)))
    base = load_checkpoint(base_run / "ckpt.pt")["model"]
    assert result.model.config.n_embd == 32  # the run's own shape, not the config's
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(base[name], tensor), name
    with pytest.raises(UserError, match="this run's own out_dir; use --init_from=resume"):
        train(parse_args(tiny_args(data_dir, base_run, init_from=str(base_run),
                                   overwrite=True)))


def test_a_start_from_a_run_with_another_tokenizer_is_refused(tmp_path, base_run):
    from nanogpt.prepare import prepare_text

    (tmp_path / "t.txt").write_text("other text, other characters: 0123456789\n" * 50)
    prepare_text(tmp_path / "t.txt", tmp_path / "data" / "other")
    with pytest.raises(UserError, match="trained on another tokenizer"):
        train(parse_args(tiny_args(tmp_path / "data", tmp_path / "out", dataset="other",
                                   init_from=str(base_run), finetune="lora")))
    assert not (tmp_path / "out").exists()


def test_a_lora_run_can_be_the_base_of_another(data_dir, tmp_path, base_run):
    first = tmp_path / "first"
    result = train(parse_args(lora_args(data_dir, first, base_run, max_iters=5,
                                        eval_interval=5)))
    second = train(parse_args(lora_args(data_dir, tmp_path / "second", first, max_iters=0)))
    model = second.model
    assert has_adapters(model)
    merged = merge_adapters(result.model)
    idx = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the second run's fresh adapters start from the first, merged
        torch.testing.assert_close(model.eval()(idx, idx)[0], merged.eval()(idx, idx)[0],
                                   atol=1e-5, rtol=0)


# ---- GPT-2: from a Hugging Face directory, sample.py, export.py ----

@pytest.mark.slow
def test_lora_on_gpt2_then_sample_and_export_merged(tmp_path, shakespeare_text):
    transformers = pytest.importorskip("transformers")
    from nanogpt.prepare import prepare_text
    from tests.conftest import run_script
    from tests.test_gpt2 import hf_logits, save_hf_gpt2

    (tmp_path / "text.txt").write_text(shakespeare_text[:30000], encoding="utf-8")
    prepare_text(tmp_path / "text.txt", tmp_path / "data" / "bpe", "gpt2")
    hf_dir = tmp_path / "tiny-gpt2"
    save_hf_gpt2(hf_dir, vocab_size=50257, n_positions=64, scramble=False)
    out = tmp_path / "out"
    args = tiny_args(tmp_path / "data", out, dataset="bpe", init_from=str(hf_dir),
                     finetune="lora", max_iters=10, eval_interval=5, warmup_iters=2,
                     lr_decay_iters=10, learning_rate=3e-2, min_lr=3e-3, sample_tokens=8)
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LoRA: rank 8, alpha 16 on c_attn, attn.c_proj, c_fc, mlp.c_proj" in result.stdout
    assert "sample at step 10" in result.stdout
    evals = read_log(out, "eval")
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 0.05
    assert load_checkpoint(out / "ckpt.pt")["lora"]["base"] == str(hf_dir)

    model, tok = load_model(out)
    assert has_adapters(model) and model.config.block_size == 32
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    result = run_script("sample.py", ["--out_dir", str(out), "--start=ROMEO:", "--device=cpu",
                                      "--dtype=float32", "--num_samples=1",
                                      "--max_new_tokens=8", "--temperature=0"])
    assert result.returncode == 0, result.stderr
    prompt = torch.tensor([tok.encode("ROMEO:")])
    greedy = model.generate(prompt, 8, temperature=0.0, dtype="float32")[0].tolist()
    assert result.stdout.split("\n---------------\n")[0] == tok.decode(greedy)

    result = run_script("export.py", ["--out_dir", str(out), "--to", str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(idx, idx)[0]
        base = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
        assert (ours - hf_logits(base, idx)).abs().max() > 1e-4  # the adapters matter
    torch.testing.assert_close(hf_logits(hf, idx), ours, atol=1e-5, rtol=0)
