"""A user's own text, odd or wrong: what prepare, train and sample do with it."""

import hashlib
import os

import numpy as np
import pytest

from nanogpt.cli import _read_prompt, sample_main, train_main
from nanogpt.config import parse_args
from nanogpt.data import BatchSampler
from nanogpt.errors import UserError
from nanogpt.prepare import prepare_text
from nanogpt.tokenizer import CharTokenizer, default_prompt
from nanogpt.tracking import EvalSample
from nanogpt.trainer import train
from tests.conftest import run_script, tiny_args


def snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_a_folder_prepared_into_itself_again_gives_the_same_dataset(tmp_path):
    # the README's own habit: the text in data/NAME/, the dataset written beside it
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "input.txt").write_text("To be, or not to be: that is the question.\n" * 50,
                                      encoding="utf-8")
    first = prepare_text(folder, folder)
    files = snapshot(folder)
    assert prepare_text(folder, folder) == first  # not the last train.bin read as text
    assert snapshot(folder) == files
    # nor another dataset prepared inside the input folder
    assert prepare_text(tmp_path, tmp_path / "all") == first
    with pytest.raises(UserError, match="holds no files to read .*prepared datasets"):
        prepare_text(tmp_path / "all", tmp_path / "again")


@pytest.mark.parametrize("tokenizer, text, val_fraction, split, unit", [
    ("char", "hello world\n" * 100, 1e-9, "val", "1 characters"),
    ("char", "hello world\n", 0.99, "train", "0 characters"),
    ("gpt2", "x" * 45 + "hello", 0.1, "val", "1 tokens"),  # 5 characters, 1 token
])
def test_a_split_too_small_to_train_is_refused_and_the_dataset_kept(tmp_path, tokenizer, text,
                                                                    val_fraction, split, unit):
    (tmp_path / "good.txt").write_text("hello world\n" * 100, encoding="utf-8")
    (tmp_path / "odd.txt").write_text(text, encoding="utf-8")
    ds = tmp_path / "ds"
    prepare_text(tmp_path / "good.txt", ds)
    before = snapshot(ds)
    with pytest.raises(UserError, match=f"the {split} split gets {unit} .*--val_fraction"):
        prepare_text(tmp_path / "odd.txt", ds, tokenizer, val_fraction)
    assert snapshot(ds) == before  # no half-written dataset, no temporary file


def test_prepare_script_errors_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "in.txt").write_text("hello world\n" * 10, encoding="utf-8")
    for args, message in [(["--out", str(tmp_path / "in.txt")], "is not a directory"),
                          (["--tokenizer", "words", "--out", str(tmp_path / "ds")],
                           "invalid choice: 'words'")]:
        result = run_script("data/prepare.py", ["--input", str(tmp_path / "in.txt"), *args])
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1
    assert (tmp_path / "in.txt").read_text(encoding="utf-8") == "hello world\n" * 10


@pytest.mark.parametrize("args, message", [
    (["--num_proc", "0"], "--num_proc must be at least 1 (got 0)"),
    (["--val_fraction", "1.5"], "--val_fraction must be between 0 and 1 (got 1.5)"),
    (["--num_procs", "4"], "unrecognized arguments: --num_procs 4"),
])
def test_openwebtext_prepare_errors_are_one_line_and_exit_2(tmp_path, args, message):
    result = run_script("data/openwebtext/prepare.py", ["--out", str(tmp_path / "owt"), *args])
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {message}" + ("" if "unrecognized" not in message else
                                                   " (see prepare.py --help)") + "\n"
    assert not (tmp_path / "owt").exists()


def test_prepare_script_says_what_it_took_that_was_not_asked(tmp_path):
    """An input.txt already in --out stands for the URL (the download error's advice), and
    a short text gives a smaller BPE than asked: both are said, not silent."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "input.txt").write_text("hello world\n" * 10, encoding="utf-8")
    result = run_script("data/prepare.py", ["--input", "https://example.com/book.txt", "--out",
                                            str(tmp_path / "ds"), "--tokenizer", "bpe",
                                            "--vocab_size", "1000"])
    assert result.returncode == 0, result.stderr
    assert f"using {tmp_path / 'ds' / 'input.txt'}, there from before" in result.stdout
    assert "(not 1000: the text repeats too few pairs" in result.stdout


def test_an_input_that_is_no_file_is_named_as_such(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match="pipe is not a regular file or a folder"):
        prepare_text(tmp_path / "pipe", tmp_path / "ds")
    (tmp_path / "in.txt").write_text("hello world\n" * 10, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # an empty path is not the current folder
    with pytest.raises(UserError, match="--input is empty"):
        prepare_text("", "ds")
    with pytest.raises(UserError, match="--out is empty"):
        prepare_text("in.txt", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "pipe"]


def test_a_split_too_small_for_any_block_size_says_so(tmp_path):
    path = tmp_path / "val.bin"
    np.arange(1, dtype=np.uint16).tofile(path)
    with pytest.raises(UserError, match="holds 1 token.*at least 2") as e:
        BatchSampler(str(path), block_size=1, batch_size=1, seed=0)
    assert "block_size=" not in str(e.value)
    np.arange(10, dtype=np.uint16).tofile(path)
    with pytest.raises(UserError, match=r"use --block_size=9 or less"):
        BatchSampler(str(path), block_size=10, batch_size=1, seed=0)
    BatchSampler(str(path), block_size=9, batch_size=1, seed=0)  # the advice works


def test_the_default_prompt_fits_a_vocabulary_without_newline():
    assert default_prompt(CharTokenizer(["\n", "a"])) == "\n"
    one_line = CharTokenizer(["a", "b"])
    assert default_prompt(one_line) == "a"
    assert EvalSample(one_line.to_dict(), "\n", 4, seed=0).prompt == "a"
    with pytest.raises(UserError, match="sample_prompt 'c' does not fit"):
        EvalSample(one_line.to_dict(), "c", 4, seed=0)


def test_text_of_one_line_trains_samples_and_is_not_resumed_on_other_data(
        tmp_path, data_dir, capsys):
    (tmp_path / "dna.txt").write_text("ACGTTGCA" * 500, encoding="utf-8")  # no newline
    prepare_text(tmp_path / "dna.txt", tmp_path / "data" / "dna")
    out = tmp_path / "out"
    train(parse_args(tiny_args(tmp_path / "data", out, dataset="dna", max_iters=2,
                               eval_interval=2, sample_tokens=8)))  # samples with the default
    capsys.readouterr()  # the run's log lines, where an earlier test set up logging
    assert sample_main(["--out_dir", str(out), "--num_samples=1", "--max_new_tokens=8",
                        "--device=cpu"]) == 0
    assert capsys.readouterr().out[:1] in "ACGT"
    before = snapshot(out)
    # Shakespeare's 65 characters, not these 4: the tokenizer is the problem, not the shape
    assert train_main(tiny_args(data_dir, out, init_from="resume")) == 2
    err = capsys.readouterr().err
    assert "uses another tokenizer or vocabulary than the checkpoint" in err, err
    assert snapshot(out) == before


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path, data_dir, capsys):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert train_main(tiny_args(data_dir, tmp_path / "notes.txt")) == 2
    assert "cannot use --out_dir" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_prompt_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "prompt.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="prompt.txt' given by --start is not UTF-8"):
        _read_prompt(f"FILE:{tmp_path / 'prompt.txt'}")
