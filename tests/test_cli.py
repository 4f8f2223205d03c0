"""Every user mistake: non-zero exit, one line naming the problem, no traceback, and no
file in out_dir changed."""

import hashlib
import json
import shutil
import sys

import pytest
import torch

from nanogpt.cli import sample_main, train_main
from nanogpt.config import parse_args
from nanogpt.data import CharTokenizer, write_dataset
from nanogpt.errors import run_guarded
from nanogpt.trainer import train
from tests.conftest import tiny_args


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "out"
    train(parse_args(tiny_args(data_dir, out, max_iters=4, eval_interval=2)))
    return out


def snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def make_odd_datasets(data_dir):
    """half_prepared: train.bin missing. other_chars: 65 characters, not Shakespeare's."""
    ds = data_dir / "half_prepared"
    ds.mkdir(exist_ok=True)
    (ds / "meta.json").write_text(json.dumps({"vocab_size": 65, "tokenizer": {"kind": "char",
                                                                              "chars": []}}))
    text = "".join(chr(0x100 + i % 65) for i in range(5000))
    write_dataset(data_dir / "other_chars", text, CharTokenizer.from_text(text))


TRAIN_CASES = {
    "unknown key": (["--lerning_rate=0.1"], "unknown config key 'lerning_rate'; did you mean "
                                             "'learning_rate'?"),
    "wrong type": (["--batch_size=eight"], "batch_size must be int, got 'eight'"),
    "heads": (["--n_embd=30", "--n_head=4"], "n_embd (30) must be divisible by n_head (4)"),
    "block too large": (["--block_size=200000", "--init_from=resume"],
                        "block_size 200000 is too large"),
    "missing bins": (["--dataset=half_prepared"], "train.bin, val.bin missing"),
    "config missing": (["--config", "no/such/config.py"],
                       "config file not found: no/such/config.py"),
    "resume without checkpoint": (["--init_from=resume", "--out_dir={empty}"],
                                  "init_from=resume but there is no checkpoint"),
    "cuda without cuda": (["--device=cuda"], "CUDA is not available"),
    "fp16 on cpu": (["--dtype=float16"], "dtype 'float16' is not supported for training on CPU"),
    "vocab mismatch": (["--vocab_size=100", "--init_from=resume"],
                       "vocab_size 100 does not match the dataset's 65"),
    "scratch over a checkpoint": ([], "already exists; resume it with --init_from=resume"),
    "resume with another shape": (["--n_layer=3", "--init_from=resume"],
                                  "n_layer=3 (checkpoint has 2)"),
    "resume on another dataset": (["--dataset=other_chars", "--init_from=resume"],
                                  "uses another tokenizer or vocabulary than the checkpoint"),
    "non-finite value": (["--learning_rate=inf"], "learning_rate must be a finite number"),
    "batch split too fine": (["--batch_split=9"], "batch_split (9) must not exceed batch_size (8)"),
    "sample prompt outside the vocabulary": (["--init_from=resume", "--sample_tokens=8",
                                              "--sample_prompt=€"],
                                             "sample_prompt '€' does not fit the dataset's "
                                             "tokenizer"),
    "lora from scratch": (["--finetune=lora", "--overwrite"], "finetune='lora' adapts trained"),
    "lora on a full run": (["--init_from=resume", "--finetune=lora"],
                           "the checkpoint is not a LoRA finetune"),
    "lora on a missing run": (["--finetune=lora", "--init_from={empty}/run", "--overwrite"],
                              "run does not exist; give a GPT-2 name"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_mistakes(case, trained, data_dir, tmp_path, capsys):
    args, message = TRAIN_CASES[case]
    if case == "cuda without cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    make_odd_datasets(data_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("{empty}", str(empty)) for a in args]
    before = snapshot(trained)
    code = train_main(tiny_args(data_dir, trained) + args)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(trained) == before
    assert list(empty.iterdir()) == []


def test_config_file_that_raises(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("n_layer = undefined_name\n")
    assert train_main(["--config", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "raised NameError: name 'undefined_name' is not defined" in err
    assert err.count("\n") == 1


SAMPLE_CASES = {
    "no checkpoint": (["--out_dir={empty}"], "no checkpoint in"),
    "unknown characters": (["--start=héllo€"], "characters not in the vocabulary: 'é', '€'"),
    "negative max_new_tokens": (["--max_new_tokens=-1"], "max_new_tokens must be >= 0"),
    "NaN temperature": (["--temperature=nan"], "temperature must be >= 0, got nan"),
    "fp16 on cpu": (["--dtype=float16", "--device=cpu"],
                    "dtype 'float16' is not supported for sampling on CPU"),
    "missing prompt file": (["--start=FILE:{empty}/prompt.txt"], "cannot read the prompt file"),
    "bad option": (["--temprature=1"], "unrecognized arguments: --temprature=1"),
    "abbreviated option": (["--num_sample=2"], "unrecognized arguments: --num_sample=2"),
    "cuda without cuda": (["--device=cuda"], "CUDA is not available"),
    "unknown device": (["--device=gpu"], "device must be auto, cpu, cuda, cuda:N or mps; "
                                         "got 'gpu'"),
}


@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_sample_mistakes(case, trained, tmp_path, capsys):
    args, message = SAMPLE_CASES[case]
    if case == "cuda without cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("{empty}", str(empty)) for a in args]
    before = snapshot(trained)
    code = sample_main(["--out_dir", str(trained), "--max_new_tokens=5", *args])
    captured = capsys.readouterr()
    assert code != 0
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert snapshot(trained) == before


def test_debug_flag_or_env_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(Exception, match="config file not found"):
        train_main(["--debug", "--config", str(tmp_path / "missing.py")])
    monkeypatch.setenv("NANOGPT_DEBUG", "1")
    with pytest.raises(Exception, match="config file not found"):
        train_main(["--config", str(tmp_path / "missing.py")])


def test_a_batch_the_host_cannot_allocate_is_one_line(data_dir, tmp_path, capsys):
    code = train_main(tiny_args(data_dir, tmp_path / "out", batch_size=10**15, max_iters=1))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: out of memory on the host; lower --batch_size")


def test_a_failing_torch_compile_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    """torch.compile's backend failing at the first step (a C compiler error, a broken
    Inductor cache) is one line naming --compile=False; --debug keeps the traceback."""
    import nanogpt.trainer

    def broken_backend(graph, example_inputs):
        raise OSError("cc1: fatal error: Python.h: No such file or directory\nmore lines")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model,
                                                                     backend=broken_backend))
    monkeypatch.setattr(nanogpt.trainer, "resolve_compile", lambda setting, device: True)
    args = tiny_args(data_dir, tmp_path / "out", max_iters=2, compile=True)
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: torch.compile failed (OSError: cc1: fatal error: Python.h: "
                          "No such file or directory); run again with --compile=False")
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed):
        train_main(args + ["--overwrite", "--debug"])
    torch._dynamo.reset()


def test_ctrl_c_while_starting_up_and_other_errors(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt  # as in the imports at start-up, before the loop's handler

    with monkeypatch.context() as m:  # the guard is in place before torch is imported
        m.setitem(sys.modules, "torch", None)
        assert run_guarded(interrupted) == 130
    assert capsys.readouterr().err == "aborted\n"
    with pytest.raises(RuntimeError, match="a bug of ours"):  # not a user mistake: traceback
        run_guarded(lambda: (_ for _ in ()).throw(RuntimeError("a bug of ours")))


def test_overwrite_flag_replaces_an_existing_run(trained, data_dir, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    (out / "ckpt.pt").write_bytes((trained / "ckpt.pt").read_bytes())
    assert train_main(tiny_args(data_dir, out, max_iters=2, eval_interval=2) + ["--overwrite"]) == 0
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 2


def test_sample_prints_the_requested_characters(trained, capsys):
    code = sample_main(["--out_dir", str(trained), "--num_samples=3", "--max_new_tokens=40",
                        "--start=ROMEO:", "--seed=7"])
    out = capsys.readouterr().out
    assert code == 0
    samples = out.split("\n---------------\n")
    assert len(samples) == 4 and samples[-1] == ""
    for s in samples[:3]:
        assert s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 40


def test_resume_needs_only_the_out_dir(trained, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    assert train_main(["--init_from=resume", f"--out_dir={out}", "--max_iters=6"]) == 0
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 6 and ckpt["config"]["n_embd"] == 32
    assert ckpt["config"]["max_iters"] == 6


def test_resume_flags_are_checked_with_the_runs_settings_not_the_defaults(trained, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    # n_embd=32 with the default n_head=12 would be refused; the run has n_head=2
    assert train_main(["--init_from=resume", f"--out_dir={out}", "--n_embd=32",
                       "--max_iters=6"]) == 0
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 6


def test_a_run_stopped_before_its_first_ckpt_pt_samples_and_exports_from_last_pt(
        trained, tmp_path, capsys):
    """always_save_checkpoint=False and Ctrl-C before the first improving evaluation: the
    stop wrote last.pt and no ckpt.pt; it is the run's only model."""
    from nanogpt.cli import export_main

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(trained / "ckpt.pt", stopped / "last.pt")
    args = ["--num_samples=2", "--max_new_tokens=20", "--seed=3"]
    assert sample_main(["--out_dir", str(trained), *args]) == 0
    expected = capsys.readouterr().out
    assert sample_main(["--out_dir", str(stopped), *args]) == 0
    assert capsys.readouterr().out == expected
    pytest.importorskip("safetensors")
    assert export_main(["--out_dir", str(stopped), "--to", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert sorted(p.name for p in stopped.iterdir()) == ["last.pt"]


def test_init_from_a_run_with_only_last_pt_loads_it(trained, tmp_path):
    from nanogpt.checkpoint import load_weights

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(trained / "ckpt.pt", stopped / "last.pt")
    model, tokenizer = load_weights(str(stopped))
    want = torch.load(trained / "ckpt.pt", weights_only=True)
    assert tokenizer == want["tokenizer"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, want["model"][name]), name


def test_export_keeps_what_a_directory_holds_unless_told_to_overwrite(trained, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from nanogpt.cli import export_main

    dest = tmp_path / "hf"
    assert export_main(["--out_dir", str(trained), "--to", str(dest)]) == 0
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    modes = {p.name: p.stat().st_mode for p in dest.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # as the umask allows, not 0600
    (dest / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert export_main(["--out_dir", str(trained), "--to", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--overwrite" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {**before, "notes.txt": b"mine"}
    (dest / "model.safetensors").write_bytes(b"stale")
    assert export_main(["--out_dir", str(trained), "--to", str(dest), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {**before, "notes.txt": b"mine"}


def test_eval_only_does_not_stick_to_later_resumes(trained, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    assert train_main(["--init_from=resume", f"--out_dir={out}", "--eval_only"]) == 0
    assert train_main(["--init_from=resume", f"--out_dir={out}", "--max_iters=6"]) == 0
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 6


def test_prompt_from_a_file(trained, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\nO Romeo")
    assert sample_main(["--out_dir", str(trained), f"--start=FILE:{prompt}", "--num_samples=1",
                        "--max_new_tokens=5"]) == 0
    assert capsys.readouterr().out.startswith("JULIET:\nO Romeo")


def test_a_prompt_file_that_is_not_text_is_one_line(trained, tmp_path, capsys):
    prompt = tmp_path / "prompt.bin"
    prompt.write_bytes(b"ROMEO:\xd0\x00\xff")
    code = sample_main(["--out_dir", str(trained), f"--start=FILE:{prompt}", "--num_samples=1",
                        "--max_new_tokens=5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: the prompt file {str(prompt)!r} given by --start is not UTF-8 text " \
                  f"(byte 6: invalid continuation byte)\n"


def test_sample_piped_into_head_stops_quietly(trained, monkeypatch, capsys):
    """python sample.py ... | head: the reader closes the pipe; no traceback."""
    import os

    class ClosedPipe:  # stdout once head has read its fill
        def __init__(self):
            self.read_end, self.write_end = os.pipe()

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return self.write_end

    pipe = ClosedPipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    assert sample_main(["--out_dir", str(trained), "--num_samples=1", "--max_new_tokens=50"]) == 141
    assert capsys.readouterr().err == ""
    os.write(pipe.write_end, b"x")  # now /dev/null: what Python flushes at exit goes nowhere
    assert os.read(pipe.read_end, 1) == b""  # the pipe has no writer left
    os.close(pipe.read_end)
    os.close(pipe.write_end)
