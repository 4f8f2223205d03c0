"""Training configuration: one dataclass, Python config files, and command-line overrides.

A config file is plain Python assignments (`n_layer = 6`). It runs in a fresh namespace;
every public name it leaves behind must be a TrainConfig field. Command-line overrides come
as `--key=value` or `--key value` and are converted to the field's type: int, float, bool,
str, Optional[...] or a Literal of choices. The lists of choices and the checks of the model's
shape are the model's and the device module's own; this module only reads them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import runpy
import types
import typing
from dataclasses import dataclass, field, fields

from nanogpt.device import DType, check_device_name
from nanogpt.errors import UserError
from nanogpt.lora import DEFAULT_TARGETS, Finetune, parse_targets
from nanogpt.model import Activation, Attention, GPTConfig, Norm, Positions
from nanogpt.optim import OptimizerName
from nanogpt.pretrained import GPT2_NAMES

Schedule = typing.Literal["cosine", "wsd"]
BatchOrder = typing.Literal["random", "epoch"]


class ConfigError(UserError):
    """A user mistake in the configuration: shown as one line, never as a traceback."""


def _f(default, help: str):  # noqa: A002 - 'help' reads best at the call sites
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = _f("out", "Directory for ckpt.pt and log.jsonl.")
    eval_interval: int = _f(2000, "Evaluate train/val loss every this many iterations.")
    log_interval: int = _f(1, "Log the training loss every this many iterations.")
    eval_iters: int = _f(200, "Batches per split in each evaluation.")
    eval_only: bool = _f(False, "Evaluate once and exit.")
    always_save_checkpoint: bool = _f(True, "Save at every eval, not only when val improves.")
    init_from: str = _f("scratch", "'scratch', 'resume' (from out_dir/ckpt.pt), a GPT-2 name "
                        "(gpt2, gpt2-medium, gpt2-large, gpt2-xl), a path to a Hugging Face "
                        "GPT-2 directory, or a nanogpt run to finetune (its out_dir or a .pt "
                        "checkpoint).")
    overwrite: bool = _f(False, "Allow a scratch run to replace an existing checkpoint.")
    # data
    dataset: str = _f("shakespeare_char", "Dataset directory name under data_dir.")
    data_dir: str = _f("data", "Where dataset directories live.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    batch_size: int = _f(12, "Sequences per micro-batch.")
    batch_split: int = _f(0, "Run each micro-batch as this many chunks: the same update "
                          "(with dropout, the same in distribution), a fraction of the "
                          "activation memory. 0: auto (on a CPU, chunks of at most 2048 "
                          "tokens; elsewhere 1).")
    block_size: int = _f(1024, "Context length in tokens.")
    batch_order: BatchOrder = _f("random", "'random': each sequence a random window of the "
                                 "split; 'epoch': every non-overlapping window once per epoch, "
                                 "in a seeded order (batches stay a function of seed and step).")
    # model
    n_layer: int = _f(12, "Transformer blocks.")
    n_head: int = _f(12, "Attention heads per block.")
    n_embd: int = _f(768, "Embedding width.")
    dropout: float = _f(0.0, "Dropout probability (0 for pretraining, 0.1+ for finetuning).")
    bias: bool = _f(False, "Biases in Linear and LayerNorm layers.")
    vocab_size: typing.Optional[int] = _f(None, "Vocabulary size; None takes the dataset's.")
    attention: Attention = _f("auto", "'flash' (torch's fused kernel), 'manual' (written out, "
                              "for reading), 'bmm' (manual in one batched matmul) or 'auto'.")
    fast_dropout: bool = _f(True, "On a CPU, cheap 16-bit dropout masks kept as bool "
                            "(nanogpt.dropout); False: torch's dropout.")
    # model: the modern recipe, each switch off (GPT-2) by default
    positions: Positions = _f("learned", "'learned' (GPT-2's table) or 'rope' (rotary).")
    norm: Norm = _f("layernorm", "'layernorm' (GPT-2) or 'rmsnorm' (no weights).")
    qk_norm: bool = _f(False, "RMS-normalise queries and keys per head.")
    activation: Activation = _f("gelu", "MLP activation: 'gelu' (GPT-2) or 'relu2' (relu^2).")
    tie_embeddings: bool = _f(True, "The head shares the token embedding (GPT-2).")
    logit_softcap: float = _f(0.0, "> 0: logits = cap * tanh(logits / cap); 0 is off.")
    zero_init: bool = _f(False, "Residual output projections (and an untied head) start at 0.")
    # optimizer
    optimizer: OptimizerName = _f("adamw", "'adamw', or 'muon': Muon for the hidden matrices "
                                  "(muon_lr), AdamW for embeddings, head and 1-D parameters.")
    learning_rate: float = _f(6e-4, "Peak learning rate (AdamW).")
    max_iters: int = _f(600000, "Total optimizer steps.")
    time_budget: float = _f(0.0, "> 0: seconds of wall clock for the whole run (start-up and "
                            "evals included); max_iters is then planned from the measured "
                            "speed so that the final eval and checkpoint fit.")
    weight_decay: float = _f(1e-1, "Weight decay of matrices and embeddings (AdamW; Muon's "
                             "matrices too).")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.95, "AdamW beta2.")
    grad_clip: float = _f(1.0, "Clip the gradient norm to this value; 0 disables.")
    muon_lr: float = _f(0.02, "Muon's learning rate (optimizer='muon').")
    muon_momentum: float = _f(0.95, "Muon's (Nesterov) momentum.")
    embedding_lr: typing.Optional[float] = _f(None, "optimizer='muon': AdamW learning rate of "
                                              "the embeddings; None: learning_rate.")
    head_lr: typing.Optional[float] = _f(None, "optimizer='muon': AdamW learning rate of an "
                                         "untied head; None: learning_rate.")
    # learning rate schedule (every learning rate follows it in proportion)
    decay_lr: bool = _f(True, "Warmup then decay; False keeps learning_rate constant.")
    lr_schedule: Schedule = _f("cosine", "'cosine' (decay from the end of warmup) or 'wsd' "
                               "(warmup, stable, then linear decay over the last "
                               "decay_fraction of the run).")
    decay_fraction: float = _f(0.2, "lr_schedule='wsd': the fraction of the run that decays.")
    warmup_iters: int = _f(2000, "Linear warmup steps.")
    lr_decay_iters: typing.Optional[int] = _f(None, "Decay ends here; None: max_iters.")
    min_lr: float = _f(6e-5, "Learning rate floor after decay (AdamW; others in proportion).")
    # finetuning: every weight, or LoRA adapters on a frozen model
    finetune: Finetune = _f("full", "'full': every weight trains; 'lora': low-rank adapters "
                            "on lora_targets train and every weight of the model stays frozen "
                            "(init_from a GPT-2 name or directory, or a nanogpt run).")
    lora_rank: int = _f(8, "finetune='lora': the rank of each adapter.")
    lora_alpha: float = _f(16.0, "finetune='lora': adapters are scaled by lora_alpha / "
                           "lora_rank.")
    lora_dropout: float = _f(0.0, "finetune='lora': dropout on each adapter's input.")
    lora_targets: str = _f(DEFAULT_TARGETS, "finetune='lora': the layers of every block that "
                           "get adapters, comma-separated: c_attn, attn.c_proj, c_fc, "
                           "mlp.c_proj.")
    # watching a run
    sample_tokens: int = _f(-1, "At each evaluation print a sample of this many tokens, from "
                            "sample_prompt and a fixed seed so that evaluations compare (not "
                            "at step 0 of a scratch run); 0: off; -1: 100 for models under "
                            "50M parameters, else off.")
    sample_prompt: str = _f("\n", "The prompt of the samples at evaluations.")
    wandb_log: bool = _f(False, "Also send every figure of log.jsonl, the samples and the "
                         "config to Weights & Biases (pip install 'nanogpt[wandb]').")
    wandb_project: str = _f("nanogpt", "wandb_log: the W&B project.")
    wandb_run_name: typing.Optional[str] = _f(None, "wandb_log: the W&B run's name; None: "
                                              "out_dir's name.")
    # system
    device: str = _f("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N', 'mps'.")
    dtype: DType = _f("auto", "'auto' (bf16 where the device has fast bf16, else float32), "
                      "'float32', 'bfloat16' or 'float16' (autocast).")
    compile: typing.Union[bool, typing.Literal["auto"]] = _f(
        "auto", "torch.compile: 'auto' (CUDA only: on a 2-core CPU the cold compile took "
        "20-120 s and steps were 0.93-1.18x as fast), True or False.")
    seed: int = _f(1337, "Seed for weights, batches and dropout.")
    activation_checkpointing: bool = _f(False, "Recompute each block in backward: up to a "
                                        "third more compute for much less activation memory.")
    num_threads: int = _f(0, "CPU threads for torch; 0: OMP_NUM_THREADS if set, else one per "
                          "physical core this process may use.")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig of a model trained from scratch with these settings."""
        return GPTConfig(block_size=self.block_size, vocab_size=self.vocab_size or vocab_size,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         dropout=self.dropout, bias=self.bias, attention=self.attention,
                         fast_dropout=self.fast_dropout,
                         activation_checkpointing=self.activation_checkpointing,
                         positions=self.positions, norm=self.norm, qk_norm=self.qk_norm,
                         activation=self.activation, tie_embeddings=self.tie_embeddings,
                         logit_softcap=self.logit_softcap, zero_init=self.zero_init)

    def runtime_options(self) -> dict:
        """The model settings that do not touch the weights (model.RUNTIME_FIELDS): they
        apply to a resumed or pretrained model too."""
        return dict(dropout=self.dropout, attention=self.attention,
                    fast_dropout=self.fast_dropout,
                    activation_checkpointing=self.activation_checkpointing)


PLAN_MIN_STEPS = 5
"""A time-budgeted run times at least this many steps before it plans its length."""


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the key for any value or combination that cannot work."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
    try:  # the model's own checks: shape, dropout, attention
        cfg.model_config(vocab_size=1)
        check_device_name(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    positive = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps",
                "batch_size")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("max_iters", "warmup_iters", "num_threads", "batch_split"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.batch_split > cfg.batch_size:
        raise ConfigError(f"batch_split ({cfg.batch_split}) must not exceed batch_size "
                          f"({cfg.batch_size}): a chunk holds at least one sequence; 0 chooses "
                          f"automatically")
    if not -2**63 <= cfg.seed < 2**63:
        raise ConfigError(f"seed must fit in 64 bits (-2**63 <= seed < 2**63), got {cfg.seed}")
    for key in ("out_dir", "data_dir"):
        if not getattr(cfg, key).strip():
            raise ConfigError(f"{key} is empty; name a directory ('.' for the current one)")
    if cfg.vocab_size is not None and cfg.vocab_size < 1:
        raise ConfigError(f"vocab_size must be >= 1 (or None), got {cfg.vocab_size}")
    if cfg.learning_rate <= 0 or cfg.min_lr < 0:
        raise ConfigError("learning_rate must be > 0 and min_lr >= 0")
    if cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr ({cfg.min_lr}) must not exceed learning_rate "
                          f"({cfg.learning_rate})")
    if cfg.lr_decay_iters is not None and cfg.lr_decay_iters < 1:
        raise ConfigError(f"lr_decay_iters must be >= 1 (or None), got {cfg.lr_decay_iters}")
    if cfg.decay_lr and cfg.lr_decay_iters is not None and cfg.lr_decay_iters < cfg.warmup_iters:
        raise ConfigError(f"lr_decay_iters ({cfg.lr_decay_iters}) must be >= warmup_iters "
                          f"({cfg.warmup_iters}): the decay would end before warmup does")
    if cfg.grad_clip < 0 or cfg.weight_decay < 0:
        raise ConfigError("grad_clip and weight_decay must be >= 0")
    for key in ("muon_lr", "embedding_lr", "head_lr"):
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.muon_momentum < 1.0:
        raise ConfigError(f"muon_momentum must be in [0, 1), got {cfg.muon_momentum}")
    if not 0.0 < cfg.decay_fraction <= 1.0:
        raise ConfigError(f"decay_fraction must be in (0, 1], got {cfg.decay_fraction}")
    if cfg.time_budget < 0:
        raise ConfigError(f"time_budget must be >= 0 seconds (0: off), got {cfg.time_budget}")
    if cfg.time_budget and cfg.decay_lr and cfg.lr_schedule == "cosine" \
            and cfg.warmup_iters < PLAN_MIN_STEPS:
        raise ConfigError(f"time_budget with the cosine schedule plans the run during warmup: "
                          f"use warmup_iters >= {PLAN_MIN_STEPS}, or lr_schedule='wsd'")
    if cfg.time_budget and cfg.lr_decay_iters is not None:
        raise ConfigError("time_budget plans the run's length: leave lr_decay_iters unset")
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    starts = ("scratch", "resume") + GPT2_NAMES
    if cfg.init_from not in starts and not _is_path(cfg.init_from):
        raise ConfigError(f"init_from must be one of {', '.join(starts)}, or a path (with a "
                          f"'/') to a Hugging Face GPT-2 directory or a nanogpt run; got "
                          f"{cfg.init_from!r}")
    if cfg.finetune == "lora":
        _validate_lora(cfg)
    if cfg.sample_tokens < -1:
        raise ConfigError(f"sample_tokens must be >= 0 (0: off) or -1 (auto), got "
                          f"{cfg.sample_tokens}")
    if cfg.wandb_log and not cfg.wandb_project:
        raise ConfigError("wandb_project must not be empty when wandb_log is on")
    if not cfg.dataset or os.sep in cfg.dataset:
        raise ConfigError(f"dataset must be a directory name under data_dir, got {cfg.dataset!r}")


def _validate_lora(cfg: TrainConfig) -> None:
    if cfg.init_from == "scratch":
        raise ConfigError("finetune='lora' adapts trained weights: set init_from to a GPT-2 "
                          "name or directory, or to a nanogpt run (its out_dir or ckpt.pt)")
    if cfg.optimizer != "adamw":
        raise ConfigError("finetune='lora' trains its adapters with AdamW: use "
                          "optimizer='adamw'")
    if cfg.lora_rank < 1 or cfg.lora_alpha <= 0:
        raise ConfigError(f"lora_rank must be >= 1 and lora_alpha > 0, got {cfg.lora_rank} "
                          f"and {cfg.lora_alpha}")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    try:
        parse_targets(cfg.lora_targets)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _is_path(text: str) -> bool:
    return "/" in text or os.sep in text


# ---- converting strings to field types ----

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _field_types() -> dict[str, object]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _unwrap_optional(tp) -> tuple[object, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _choices(tp) -> tuple:
    """The values a Literal type (or bool | Literal) allows; () for other types."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(c for a in typing.get_args(tp) for c in
                     ((True, False) if a is bool else _choices(a)))
    return ()


def convert(key: str, value: object, from_text: bool = True) -> object:
    """Convert value to the type of TrainConfig field `key`: a string from the command line
    (from_text) is parsed; a Python value from a config file must already have the type
    (an int is accepted for a float). Raise ConfigError naming the key on failure."""
    tp, optional = _unwrap_optional(_field_types()[key])
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be None")
    choices = _choices(tp)
    if choices:
        if isinstance(value, str) and True in choices:  # 'False' from text or an old file
            low = value.strip().lower()
            value = True if low in _TRUE else False if low in _FALSE else value
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; "
                              f"got {value!r}")
        return value
    if isinstance(value, str) and from_text:
        return _parse_str(key, value, tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def _parse_str(key: str, text: str, tp) -> object:
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if tp is int:
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float) if "e" in text.lower() else int(text)
        if tp is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"{key} must be {tp.__name__}, got {text!r}") from None


def _unknown_key(key: str) -> ConfigError:
    names = [f.name for f in fields(TrainConfig)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see README for the keys"
    return ConfigError(f"unknown config key {key!r}{hint}")


# ---- config files and argv ----

def load_config_file(path: str) -> dict[str, object]:
    """Run a Python config file and return its public assignments."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(path)
    except (Exception, SystemExit) as e:  # the user's file: say how it failed, not our stack
        raise ConfigError(f"config file {path} raised {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType)}


def split_argv(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split argv into config files (positional or --config) and (key, value) overrides.

    `--key=value`, `--key value` and, for a bool key, a bare `--key` (meaning True).
    """
    bool_keys = {name for name, tp in _field_types().items()
                 if tp is bool or True in _choices(tp)}  # a bare --compile means True
    files: list[str] = []
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            files.append(arg)
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if key in bool_keys and (nxt is None or nxt.startswith("--")):
                value = "True"
            elif nxt is None:
                raise ConfigError(f"--{key} needs a value (--{key}=VALUE)")
            else:
                value = nxt
                i += 1
        if key == "config":
            files.append(value)
        else:
            pairs.append((key, value))
        i += 1
    return files, pairs


def parse_args(argv: list[str], base: dict[str, object] | None = None) -> TrainConfig:
    """Build a TrainConfig from base, then config files, then overrides; later ones win."""
    return TrainConfig(**given_values(argv, base))


def given_values(argv: list[str], base: dict[str, object] | None = None) -> dict[str, object]:
    """The values base, the config files and the overrides of argv set (later ones win),
    converted but not yet checked together."""
    files, pairs = split_argv(argv)
    known = {f.name for f in fields(TrainConfig)}
    values = {k: convert(k, v, from_text=False) for k, v in (base or {}).items() if k in known}
    for path in files:
        for key, value in load_config_file(path).items():
            if key not in known:
                raise ConfigError(f"{path}: " + str(_unknown_key(key)))
            values[key] = convert(key, value, from_text=False)
    for key, value in pairs:
        if key not in known:
            raise _unknown_key(key)
        values[key] = convert(key, value)
    return values


def format_config(cfg: TrainConfig) -> str:
    return "\n".join(f"  {k} = {v!r}" for k, v in cfg.to_dict().items())


def help_text() -> str:
    rows = [f"  --{f.name}={f.default!r}  {f.metadata.get('help', '')}"
            for f in fields(TrainConfig)]
    return "\n".join(rows)
