"""The modern recipe: each switch alone and all together, with every attention path, the KV
cache, activation checkpointing, batch chunks, resume and export; Muon; the schedules; the
time budget."""

from __future__ import annotations

import math
import time

import pytest
import torch

from nanogpt.checkpoint import TrainState, load_checkpoint
from nanogpt.config import parse_args
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.optim import Muon, build_optimizer, newton_schulz, split_parameters
from nanogpt.sampling import generate_tokens
from nanogpt.trainer import TimeBudget, get_lr, train
from tests.conftest import read_log, tiny_args, tiny_gpt, train_losses

SWITCHES = {
    "rope": {"positions": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"activation": "relu2"},
    "untied": {"tie_embeddings": False},
    "softcap": {"logit_softcap": 3.0},
    "zero_init": {"zero_init": True},
}
MODERN = {k: v for switch in SWITCHES.values() for k, v in switch.items()}
MODERN_TRAINING = {**MODERN, "optimizer": "muon", "muon_lr": 0.03, "lr_schedule": "wsd",
                   "decay_fraction": 0.4, "batch_order": "epoch", "embedding_lr": 0.02,
                   "head_lr": 0.005}
PATHS = ("manual", "flash", "bmm")


def modern_gpt(switches: dict, attention: str = "manual", **kw) -> GPT:
    model = tiny_gpt(attention=attention, **switches, **kw)
    with torch.no_grad():  # zero_init starts blocks as identities: give them something to do
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("attention", PATHS)
@pytest.mark.parametrize("switch", [*SWITCHES, "all"])
def test_each_switch_is_causal_on_every_attention_path(switch, attention):
    model = modern_gpt(MODERN if switch == "all" else SWITCHES[switch], attention)
    idx = torch.randint(0, 37, (2, 16))
    logits, _ = model(idx, idx)
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 37, (2, 7))
    again, _ = model(changed, changed)
    torch.testing.assert_close(again[:, :9], logits[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(again[:, 9:], logits[:, 9:])


@pytest.mark.parametrize("attention", ["flash", "bmm"])
def test_attention_paths_agree_under_the_modern_recipe(attention):
    manual, other = modern_gpt(MODERN, "manual"), modern_gpt(MODERN, attention)
    other.load_state_dict(manual.state_dict())
    idx = torch.randint(0, 37, (3, 16))
    torch.testing.assert_close(other(idx, idx)[0], manual(idx, idx)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", PATHS)
def test_kv_cache_gives_the_uncached_tokens_past_block_size(attention):
    model = modern_gpt(MODERN, attention)
    with torch.no_grad():  # peaked logits: greedy never hinges on rounding
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    idx = torch.randint(0, 37, (2, 5))
    runs = [torch.stack(list(generate_tokens(model, idx, 40, temperature=0.0,
                                             use_cache=cache, context_shift=3)), 1)
            for cache in (True, False)]
    assert torch.equal(runs[0], runs[1])


def test_softcap_bounds_the_logits_and_rope_has_no_position_table():
    model = modern_gpt({"logit_softcap": 2.0, "positions": "rope"})
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    idx = torch.randint(0, 37, (2, 16))
    capped, _ = model(idx, idx)
    model.config.logit_softcap = 0.0
    raw, _ = model(idx, idx)
    assert raw.abs().max() > 4.0 and capped.abs().max() <= 2.0
    torch.testing.assert_close(capped, 2.0 * torch.tanh(raw / 2.0))
    assert "transformer.wpe.weight" not in model.state_dict()
    assert not any("rope" in k for k in model.state_dict())  # tables are rebuilt, not saved


def test_untied_zero_init_starts_every_block_as_the_identity_and_at_uniform_loss():
    model = tiny_gpt(**MODERN)
    assert model.lm_head.weight is not model.transformer.wte.weight
    idx = torch.randint(0, 37, (2, 16))
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(37), abs=1e-6)  # a zero head: uniform
    x = torch.randn(2, 16, 16)
    block = model.transformer.h[0]
    cos, sin = model.rope_cos[:16], model.rope_sin[:16]
    torch.testing.assert_close(block(x, None, (cos, sin)), x, rtol=0, atol=0)


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    pytest.importorskip("safetensors")
    from nanogpt.pretrained import export_hf

    for switch, settings in SWITCHES.items():
        if switch == "zero_init":  # only how training starts: GPT-2 holds the result
            export_hf(tiny_gpt(**settings), tmp_path / switch)
            continue
        with pytest.raises(UserError, match=f"{next(iter(settings))}=") as e:
            export_hf(tiny_gpt(**settings), tmp_path / switch)
        assert "GPT-2" in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / switch).exists()


# ---- Muon ----

@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_newton_schulz_gives_a_nearly_orthogonal_update_along_the_gradient(shape):
    torch.manual_seed(0)
    u, _, vt = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
    spread = torch.logspace(0, -2, min(shape))  # singular values over 2 decades
    g = u @ torch.diag(spread) @ vt
    update = newton_schulz(g)
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.6 and s.max() < 1.25  # every direction moves about the same
    cosine = (update * (u @ vt)).sum() / (update.norm() * (u @ vt).norm())
    assert cosine > 0.95  # and in the gradient's own directions: U V^T


def test_a_stack_of_matrices_is_orthogonalised_as_each_one_alone():
    torch.manual_seed(0)
    stack = torch.randn(3, 8, 24)
    together = newton_schulz(stack)
    for g, u in zip(stack, together):
        torch.testing.assert_close(u, newton_schulz(g), rtol=1e-4, atol=1e-5)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny_gpt(**MODERN)
    matrices, embeddings, vectors = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("transformer.h.") and p.dim() == 2 for p in matrices)
    assert sorted(names[id(p)] for p in embeddings) == ["lm_head.weight",
                                                        "transformer.wte.weight"]
    assert len(matrices) + len(embeddings) + len(vectors) == len(list(model.parameters()))
    opt = build_optimizer(model, "muon", learning_rate=1e-3, weight_decay=0.0, betas=(0.8, 0.95),
                          device_type="cpu", muon_lr=0.02, embedding_lr=0.05, head_lr=0.01)
    muon = [o for o in opt.optimizers if isinstance(o, Muon)][0]
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for p in matrices}
    assert sorted(round(g["lr_scale"], 6) for g in opt.param_groups) == [1.0, 10.0, 20.0, 50.0]


def test_a_muon_step_moves_a_matrix_by_an_orthogonal_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 8))
    opt = Muon([w], lr=0.1, momentum=0.0, nesterov=False)
    before = w.detach().clone()
    w.grad = torch.randn(24, 8) * torch.logspace(0, -2, 8)  # badly conditioned
    opt.step()
    step = (before - w.detach()) / 0.1 / (24 / 8) ** 0.5
    s = torch.linalg.svdvals(step)
    assert s.min() > 0.6 and s.max() < 1.2


# ---- schedules and the time budget ----

def test_wsd_schedule_warms_up_holds_then_decays_linearly():
    cfg = parse_args(["--learning_rate=1.0", "--min_lr=0.0", "--warmup_iters=10",
                      "--max_iters=100", "--lr_schedule=wsd", "--decay_fraction=0.4"])
    lrs = [get_lr(i, cfg) for i in range(101)]
    assert lrs[0] < lrs[5] < lrs[9] < 1.0
    assert all(lr == 1.0 for lr in lrs[10:61])
    assert lrs[80] == pytest.approx(0.5) and lrs[100] == 0.0
    assert all(a > b for a, b in zip(lrs[60:100], lrs[61:101]))


def test_time_budget_plan_fits_steps_evals_and_the_final_save():
    cfg = parse_args(["--eval_interval=100", "--max_iters=100000"])
    budget = TimeBudget(60.0, time.time() - 10.0, cfg)  # 10 s of the 60 already spent
    budget.evaluated(2.0)
    budget.window = (5, time.perf_counter() - 0.5)  # 20 steps in 0.5 s since iter 5
    n = budget.plan(25, cfg)
    left = 60.0 - 10.0 - (0.02 * 60 + 1.0)
    per_step, evals = 0.5 / 20, n // 100 + (n % 100 != 0)
    assert (n - 25) * per_step + evals * 2.0 <= left + 1e-6  # it fits
    assert (n + 1 - 25) * per_step + ((n + 1) // 100 + ((n + 1) % 100 != 0)) * 2.0 > left - 0.1
    capped = parse_args(["--eval_interval=100", "--max_iters=300"])
    budget = TimeBudget(60.0, time.time() - 10.0, capped)
    budget.evaluated(2.0)
    budget.window = (5, time.perf_counter() - 0.5)
    assert budget.plan(25, capped) == 300  # the configured max_iters is a cap
    wsd = parse_args(["--eval_interval=100", "--max_iters=100000", "--lr_schedule=wsd",
                      "--decay_fraction=0.4", "--warmup_iters=10"])
    budget = TimeBudget(60.0, time.time() - 10.0, wsd)
    budget.evaluated(2.0)
    budget.window = (250, time.perf_counter() - 0.01)  # fast: 1000 more steps would fit,
    assert budget.plan(270, wsd, planned=400) == 400  # but decaying (from 240), never longer
    budget.window = (250, time.perf_counter() - 20.0)  # slow: 1 s a step
    assert budget.plan(270, wsd, planned=400) < 400  # shorter, to end in time


def test_a_time_budgeted_run_ends_in_time_and_resume_keeps_its_plan(data_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(data_dir, out, max_iters=100000, eval_interval=100, log_interval=50,
                     lr_decay_iters=None, time_budget=6, warmup_iters=5, num_threads=1,
                     **MODERN_TRAINING)
    t0 = time.time()
    result = train(parse_args(args), start_time=t0)
    assert time.time() - t0 < 6.0
    plans = read_log(out, "plan")  # the first, then again as the timings firm up
    assert result.iter_num == plans[-1]["max_iters"] > 100
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["planned_iters"] == ckpt["iter_num"] == result.iter_num
    assert read_log(out, "eval")[-1]["iter"] == result.iter_num  # the final eval happened
    # resumed: the plan stays, however long the budget says
    train(parse_args(args + ["--init_from=resume", "--time_budget=1000"]))
    assert load_checkpoint(out / "ckpt.pt")["iter_num"] == result.iter_num


# ---- training: chunks, resume ----

def test_modern_training_in_chunks_gives_the_same_update(data_dir, tmp_path):
    runs = {}
    for split in (1, 3):
        out = tmp_path / f"split{split}"
        train(parse_args(tiny_args(data_dir, out, max_iters=6, eval_interval=6,
                                   batch_split=split, **MODERN_TRAINING)))
        runs[split] = (train_losses(out), load_checkpoint(out / "ckpt.pt")["model"])
    assert list(runs[3][0].values()) == pytest.approx(list(runs[1][0].values()), rel=1e-4)
    for k, w in runs[1][1].items():
        torch.testing.assert_close(runs[3][1][k], w, rtol=1e-3, atol=1e-4)


def test_modern_training_learns_and_resumes_exactly(data_dir, tmp_path):
    common = dict(max_iters=24, eval_interval=6, dropout=0.1, always_save_checkpoint=True,
                  **MODERN_TRAINING)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(parse_args(tiny_args(data_dir, straight, **common)))
    train(parse_args(tiny_args(data_dir, split, **{**common, "max_iters": 12})))
    train(parse_args(tiny_args(data_dir, split, **common, init_from="resume")))
    assert train_losses(straight) == train_losses(split)
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["model_args"]["positions"] == "rope" and a["model_args"]["logit_softcap"] == 3.0
    evals = read_log(straight, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5


def test_resume_refuses_another_recipe(data_dir, tmp_path):
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=2, eval_interval=2, **MODERN)))
    with pytest.raises(UserError, match=r"positions='learned' \(checkpoint has 'rope'\)"):
        train(parse_args(tiny_args(data_dir, out, max_iters=4, init_from="resume",
                                   **{**MODERN, "positions": "learned"})))


def test_resume_refuses_another_optimizer(data_dir, tmp_path):
    out = tmp_path / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=2, eval_interval=2, **MODERN_TRAINING)))
    with pytest.raises(UserError, match="trained with optimizer='muon', not 'adamw'; resume "
                                        "with --optimizer=muon"):
        train(parse_args(tiny_args(data_dir, out, max_iters=4, init_from="resume",
                                   **{**MODERN_TRAINING, "optimizer": "adamw"})))


def test_resume_takes_the_optimizer_settings_given_and_the_saved_moments():
    """Flags changed on resume (muon_lr, embedding_lr, betas, weight decay, momentum) take
    effect; torch's load_state_dict alone would bring back the saved ones."""
    model = tiny_gpt(**MODERN)

    def optimizer(**kw):
        return build_optimizer(model, "muon", learning_rate=1e-3, device_type="cpu", **kw)

    first = optimizer(weight_decay=0.0, betas=(0.8, 0.95), muon_lr=0.02, embedding_lr=0.05)
    _, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long))
    loss.backward()
    first.step()
    ckpt = TrainState(model, first).to_checkpoint()
    given = dict(weight_decay=0.1, betas=(0.9, 0.99), muon_lr=0.04, embedding_lr=0.01,
                 muon_momentum=0.9)
    second = optimizer(**given)
    wanted = [{k: v for k, v in g.items() if k != "params"} for g in second.param_groups]
    TrainState(model, second).restore(ckpt)
    assert [{k: v for k, v in g.items() if k != "params"} for g in second.param_groups] == wanted
    assert sorted(round(g["lr_scale"], 6) for g in second.param_groups) == [1.0, 1.0, 10.0, 40.0]
    saved = [s for o in first.optimizers for s in o.state.values()]
    restored = [s for o in second.optimizers for s in o.state.values()]
    assert len(saved) == len(restored) > 0
    for a, b in zip(saved, restored):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_default_config_is_still_gpt2():
    config = GPTConfig()
    assert (config.positions, config.norm, config.qk_norm, config.activation,
            config.tie_embeddings, config.logit_softcap, config.zero_init) == \
        ("learned", "layernorm", False, "gelu", True, 0.0, False)
