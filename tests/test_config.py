import pytest

from nanogpt.config import ConfigError, TrainConfig, parse_args, split_argv
from tests.conftest import ROOT


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_file_then_overrides_in_both_flag_forms(tmp_path):
    cfg_file = write(tmp_path, "n_layer = 3\nn_head = 2\nlearning_rate = 1e-2\nbatch_size = 4\n")
    cfg = parse_args(["--config", cfg_file, "--n_head=4", "--batch_size", "7", "--bias"])
    assert (cfg.n_layer, cfg.n_head, cfg.batch_size, cfg.bias) == (3, 4, 7, True)
    assert cfg.learning_rate == 1e-2


def test_positional_config_file_like_nanogpt(tmp_path):
    cfg = parse_args([write(tmp_path, "max_iters = 9\n")])
    assert cfg.max_iters == 9


def test_values_take_the_fields_type():
    cfg = parse_args(["--learning_rate=1", "--max_iters=2e3", "--compile=false",
                      "--decay_lr=False", "--vocab_size=None", "--lr_decay_iters=100"])
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1.0
    assert cfg.max_iters == 2000 and isinstance(cfg.max_iters, int)
    assert cfg.compile is False and cfg.decay_lr is False
    assert cfg.vocab_size is None and cfg.lr_decay_iters == 100


@pytest.mark.parametrize("argv, message", [
    (["--lerning_rate=1"], "unknown config key 'lerning_rate'; did you mean 'learning_rate'?"),
    (["--max_iters=abc"], "max_iters must be int, got 'abc'"),
    (["--max_iters=1.5"], "max_iters must be int"),
    (["--bias=maybe"], "bias must be bool"),
    (["--n_embd=100", "--n_head=3"], "n_embd (100) must be divisible by n_head (3)"),
    (["--dtype=float8"], "dtype must be one of"),
    (["--device=tpu"], "device must be"),
    (["--batch_size=0"], "batch_size must be >= 1"),
    (["--min_lr=1", "--learning_rate=0.1"], "min_lr (1.0) must not exceed learning_rate"),
    (["--max_iters"], "--max_iters needs a value"),
    (["--seed=1e30"], "seed must fit in 64 bits"),
    (["--seed=-9223372036854775809"], "seed must fit in 64 bits"),
    (["--out_dir="], "out_dir is empty; name a directory ('.' for the current one)"),
    (["--data_dir= "], "data_dir is empty"),
])
def test_bad_values_name_the_key(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert message in str(e.value)


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(["--config", str(tmp_path / "nope.py")])
    with pytest.raises(ConfigError, match="raised ZeroDivisionError"):
        parse_args([write(tmp_path, "x = 1 / 0\n")])
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'; did you mean 'n_layer'"):
        parse_args([write(tmp_path, "n_layers = 3\n")])
    with pytest.raises(ConfigError, match="batch_size must be int"):
        parse_args([write(tmp_path, "batch_size = '8'\n")])
    with pytest.raises(ConfigError, match="raised SystemExit: 3"):
        parse_args([write(tmp_path, "raise SystemExit(3)\n")])
    with pytest.raises(ConfigError, match="raised SystemExit: stop here"):
        parse_args([write(tmp_path, "import sys\nsys.exit('stop here')\n")])


def test_config_files_may_import_and_use_private_names(tmp_path):
    cfg = parse_args([write(tmp_path, "import math\n_w = 64\nn_head = 4\nn_embd = _w * 2\n")])
    assert cfg.n_embd == 128


def test_bare_bool_flag_before_another_flag():
    files, pairs = split_argv(["--overwrite", "--max_iters", "5"])
    assert files == [] and pairs == [("overwrite", "True"), ("max_iters", "5")]


def test_defaults_are_valid():
    TrainConfig()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = parse_args(["--config", str(path)])
    assert cfg.out_dir != "out" or path.name.startswith("eval")


def test_non_finite_and_inconsistent_values_are_refused():
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        parse_args(["--learning_rate=nan"])
    with pytest.raises(ConfigError, match="lr_decay_iters \\(5\\) must be >= warmup_iters"):
        parse_args(["--lr_decay_iters=5", "--warmup_iters=10"])


def test_bare_compile_flag_means_true():
    assert parse_args(["--compile", "--bias"]).compile is True
    assert parse_args(["--compile=auto"]).compile == "auto"
    with pytest.raises(ConfigError, match="compile must be one of True, False, auto"):
        parse_args(["--compile=sometimes"])
