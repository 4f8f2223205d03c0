"""OpenAI GPT-2 weights in and out: Hugging Face GPT-2 directories <-> nanogpt models.

A Hugging Face GPT-2 directory holds `config.json` and `model.safetensors` (or
`pytorch_model.bin`, or shards with an `*.index.json`). Loading reads tensors only:
safetensors, or torch.load with weights_only=True, never a pickle. Names load from the
Hugging Face Hub through huggingface_hub (installed with transformers: the `hf` extra).

HF GPT-2 stores c_attn, c_proj and c_fc in Conv1D layout, (in, out): the transpose of
nn.Linear's (out, in). Its MLP uses the tanh approximation of GELU ('gelu_new'), so loaded
models get gelu_approximate='tanh'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nanogpt.errors import UserError, first_line, os_reason
from nanogpt.model import GPT, GPTConfig, LayerNorm

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community"
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED = ("attn.bias", "attn.masked_bias")  # causal-mask buffers, not weights
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class PretrainedError(UserError):
    pass


# ---- loading ----

def from_pretrained(name_or_path: str | os.PathLike, dropout: float | None = None,
                    **runtime: object) -> GPT:
    """A GPT holding GPT-2 weights from a local HF directory or a GPT-2 name.

    An existing directory wins over a name. Only dropout and the other runtime choices
    (model.RUNTIME_FIELDS) may differ from the saved model.
    """
    directory = resolve_pretrained(name_or_path)
    config = config_from_hf(read_hf_config(directory), dropout=dropout).with_runtime(**runtime)
    model = GPT.empty(config)  # load_hf_state_dict fills every weight or fails
    load_hf_state_dict(model, read_hf_weights(directory))
    return model


def resolve_pretrained(name_or_path: str | os.PathLike) -> Path:
    """The local directory for name_or_path, downloading a GPT-2 name when needed."""
    check_name_or_path(name_or_path)
    path = Path(name_or_path)
    return path if path.is_dir() else _download(str(name_or_path))


def check_name_or_path(name_or_path: str | os.PathLike) -> None:
    if not Path(name_or_path).is_dir() and str(name_or_path) not in GPT2_NAMES:
        raise PretrainedError(f"{str(name_or_path)!r} is neither a directory nor a GPT-2 name; "
                              f"use one of {', '.join(GPT2_NAMES)} or a Hugging Face GPT-2 "
                              f"directory")


def _download(name: str) -> Path:
    try:  # the Hub's weights are safetensors: check before a download of up to 6 GB
        import safetensors  # noqa: F401
        from huggingface_hub import snapshot_download
    except ImportError as e:
        missing = e.name or "huggingface_hub"
        raise PretrainedError(f"downloading {name} needs {missing}: pip install {missing} (or "
                              f"pip install 'nanogpt[hf]'), or pass a local directory holding "
                              f"config.json and model.safetensors") from None
    repo = f"{HUB_ORG}/{name}"
    try:
        return Path(snapshot_download(repo_id=repo,
                                      allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:  # noqa: BLE001 - network, auth and cache errors all mean the same
        first = first_line(e, 200)
        raise PretrainedError(f"could not download {name} from the Hugging Face Hub ({first}); "
                              f"save config.json and model.safetensors from "
                              f"https://huggingface.co/{repo} into a directory and pass "
                              f"that directory instead") from None


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise PretrainedError(f"{directory} has no config.json; it is not a Hugging Face "
                              f"model directory") from None
    except ValueError as e:
        raise PretrainedError(f"{path} is not valid JSON ({e})") from None


def config_from_hf(hf: dict, dropout: float | None = None) -> GPTConfig:
    """GPTConfig for an HF GPT-2 config.json; PretrainedError for what nanogpt cannot run."""
    if hf.get("model_type") != "gpt2":
        raise PretrainedError(f"model_type is {hf.get('model_type')!r}; only GPT-2 "
                              f"(model_type 'gpt2') checkpoints load into nanogpt")
    act = hf.get("activation_function", "gelu_new")
    n_embd = hf["n_embd"]
    unsupported = {
        "activation_function": act not in ACTIVATIONS,
        "n_inner": hf.get("n_inner") not in (None, 4 * n_embd),
        "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5) != 1e-5,
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": hf.get("add_cross_attention", False),
        "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
    }
    bad = [f"{k}={hf.get(k)!r}" for k, is_bad in unsupported.items() if is_bad]
    if bad:
        raise PretrainedError(f"this GPT-2 variant has {', '.join(bad)}, which nanogpt's "
                              f"model does not implement")
    return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd,
                     dropout=0.0 if dropout is None else dropout, bias=True,
                     gelu_approximate=ACTIVATIONS[act])


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor in directory's weight file(s); safetensors preferred over .bin."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"]
                                .values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_weight_file(directory / shard))
            return state
        return _read_weight_file(path)
    raise PretrainedError(f"{directory} holds no weights: expected one of "
                          f"{', '.join(WEIGHT_FILES)}")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise PretrainedError(f"reading {path.name} needs safetensors: pip install "
                                  f"safetensors (or pip install 'nanogpt[hf]')") from None
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise PretrainedError(f"{path} is damaged or not safetensors ({e})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a refused pickle lands here too
        raise PretrainedError(f"{path} is damaged, or holds more than tensors (it cannot be "
                              f"loaded safely)") from None
    if not isinstance(state, dict):
        raise PretrainedError(f"{path} does not hold a state dict")
    return state


def load_hf_state_dict(model: GPT, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy HF GPT-2 tensors into model (names with or without 'transformer.')."""
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        key = key.removeprefix("transformer.")
        if ".".join(key.split(".")[-2:]) in IGNORED or key == "lm_head.weight":  # tied
            continue
        if key.endswith(CONV1D):
            tensor = tensor.t()
        converted["transformer." + key] = tensor
    expected = {k for k in ours if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - converted.keys()), sorted(converted.keys() - expected)
    if missing or unexpected:
        raise PretrainedError(f"the weights do not fit a GPT-2 of this config: missing "
                              f"{missing[:3] or 'none'}, unexpected {unexpected[:3] or 'none'}")
    for key, tensor in converted.items():
        if tensor.shape != ours[key].shape:
            raise PretrainedError(f"{key} has shape {tuple(tensor.shape)} in the weights but "
                                  f"{tuple(ours[key].shape)} in config.json's model")
    with torch.no_grad():
        for key, tensor in converted.items():
            ours[key].copy_(tensor)


def load_pretrained_model(name_or_path: str, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer), as checkpoint.load_model gives for an out_dir: GPT-2's
    BPE, or the tokenizer a nanogpt export wrote beside its weights (exported_tokenizer)."""
    from nanogpt.tokenizer import GPT2Tokenizer, tokenizer_from_dict

    check_name_or_path(name_or_path)
    meta = exported_tokenizer(name_or_path)
    # fail on a missing tiktoken before loading gigabytes
    tokenizer = GPT2Tokenizer() if meta is None else tokenizer_from_dict(meta)
    model = from_pretrained(name_or_path).to(device)
    if model.config.vocab_size != tokenizer.vocab_size:
        what = "GPT-2's" if meta is None else f"its {EXPORTED_TOKENIZER}'s"
        raise PretrainedError(f"{name_or_path} has vocab_size {model.config.vocab_size}, not "
                              f"{what} {tokenizer.vocab_size}: the tokenizer does not fit")
    model.eval()
    return model, tokenizer


EXPORTED_TOKENIZER = "nanogpt_tokenizer.json"


def exported_tokenizer(name_or_path: str | os.PathLike) -> dict | None:
    """The tokenizer (as meta.json holds it) that export_hf kept beside the weights of a
    nanogpt run, or None: a GPT-2 name, or a directory of GPT-2 BPE weights."""
    path = Path(name_or_path) / EXPORTED_TOKENIZER
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise PretrainedError(f"{path} holds no tokenizer")
    return meta


# ---- exporting ----

GPT2_SETTINGS = {"positions": "learned", "norm": "layernorm", "qk_norm": False,
                 "activation": "gelu", "tie_embeddings": True, "logit_softcap": 0.0}
"""What GPT-2's format holds of GPTConfig's switches (zero_init only starts training)."""


def check_exportable(config: GPTConfig) -> None:
    """PretrainedError naming the first switch GPT-2's format cannot hold."""
    for key, gpt2 in GPT2_SETTINGS.items():
        if getattr(config, key) != gpt2:
            raise PretrainedError(f"GPT-2's format cannot hold this model: it has "
                                  f"{key}={getattr(config, key)!r}, GPT-2 has {key}={gpt2!r}; "
                                  f"only models trained with GPT-2's settings export to "
                                  f"transformers")


def hf_config_for(config: GPTConfig, tokenizer_meta: dict | None = None) -> dict:
    """An HF GPT-2 config.json dict describing a nanogpt model."""
    hf = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.gelu_approximate == "tanh" else "gelu",
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "scale_attn_weights": True, "tie_word_embeddings": True, "use_cache": True,
    }
    kind = (tokenizer_meta or {}).get("kind")
    hf["bos_token_id"] = hf["eos_token_id"] = None  # GPT2Config's default is GPT-2's 50256
    if kind == "gpt2":
        hf["bos_token_id"] = hf["eos_token_id"] = 50256
    elif kind == "bpe":
        from nanogpt.tokenizer import BPETokenizer

        eot = BPETokenizer.from_dict(tokenizer_meta).eot_token
        if eot is not None:
            hf["bos_token_id"] = hf["eos_token_id"] = eot
    return hf


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """model's weights under HF GPT-2 names and layouts (lm_head left out: it is tied).

    A bias=False model gets zero biases: the same function, in a layout GPT-2 can hold.
    """
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        tensor = tensor.detach().cpu()
        state[key] = (tensor.t() if key.endswith(CONV1D) else tensor).contiguous()
    if not model.config.bias:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                state[f"{name}.bias"] = torch.zeros(module.out_features,
                                                    dtype=module.weight.dtype)
            elif isinstance(module, LayerNorm):
                state[f"{name}.bias"] = torch.zeros_like(state[f"{name}.weight"])
    return state


def export_hf(model: GPT, dest: str | os.PathLike, tokenizer_meta: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write model as an HF GPT-2 directory: config.json + model.safetensors.

    transformers.GPT2LMHeadModel.from_pretrained(dest) then computes the same logits.
    tokenizer_meta (the checkpoint's) is kept beside them as nanogpt_tokenizer.json, and
    written as tokenizer files that AutoTokenizer loads (nanogpt.hf_tokenizer). dest must be
    new or empty unless overwrite: its files could be weights nothing else holds (an earlier
    export, a LoRA run's base).
    """
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise PretrainedError("exporting needs safetensors: pip install safetensors "
                              "(or pip install 'nanogpt[hf]')") from None
    check_exportable(model.config)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise PretrainedError(f"{dest} exists and is not a directory; pass a directory to --to")
    held = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
    if held and not overwrite:
        raise PretrainedError(f"{dest} already holds files ({', '.join(held[:3])}"
                              f"{', ...' if len(held) > 3 else ''}); pass a new or empty "
                              f"directory to --to, or --overwrite to replace what an export "
                              f"writes there")
    config = hf_config_for(model.config, tokenizer_meta)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        save_file(hf_state_dict(model), str(dest / "model.safetensors"),
                  metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)  # safetensors makes its file 0600: give it the mode of the others
        (dest / "model.safetensors").chmod(0o666 & ~umask)
        (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if tokenizer_meta is not None:
            from nanogpt.hf_tokenizer import save_hf_tokenizer

            (dest / EXPORTED_TOKENIZER).write_text(
                json.dumps(tokenizer_meta, ensure_ascii=False), encoding="utf-8")
            save_hf_tokenizer(tokenizer_meta, dest, model.config.block_size)
    except OSError as e:  # a missing parent, a file in the way, permissions, a full disk
        raise PretrainedError(f"cannot write the export to {dest}: {os_reason(e)}") from None
    return dest


def export_checkpoint(out_dir: str | os.PathLike, dest: str | os.PathLike,
                      overwrite: bool = False) -> Path:
    """Export the checkpoint in out_dir (checkpoint.model_checkpoint; see export_hf); a LoRA
    run's adapters are merged into its base, giving a plain GPT-2."""
    from nanogpt.checkpoint import (  # checkpoint loads GPT-2 through this module
        load_checkpoint,
        model_checkpoint,
        model_from_checkpoint,
    )
    from nanogpt.lora import has_adapters, merge_adapters

    ckpt = load_checkpoint(model_checkpoint(out_dir))
    model = model_from_checkpoint(ckpt)
    if has_adapters(model):
        merge_adapters(model)
    return export_hf(model, dest, ckpt.get("tokenizer"), overwrite)
