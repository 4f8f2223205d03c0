"""Tokenizer files for transformers, written from a checkpoint's tokenizer (plain JSON: no
tokenizer library is needed to write them).

With them, an exported directory loads with AutoTokenizer.from_pretrained and encodes and
decodes as nanogpt does, so pipeline("text-generation", model=dir) continues a prompt as
sample.py does. Each kind is written as the Hugging Face `tokenizers` format it is:
- gpt2: GPT-2's own vocab.json and merges.txt (nanogpt/assets' encoder.json and vocab.bpe).
- bpe: a tokenizer.json holding a byte-level BPE. nanogpt encodes with tiktoken, which
  merges the adjacent pair whose joined bytes have the lowest id, and takes a whole
  pre-token when it is a token. The file says the same in `tokenizers` terms: every split of
  each token into two tokens is a merge, ranked by the joined token's id, and
  ignore_merges takes whole pre-tokens (as Llama 3's and GPT-4's converted tokenizers do).
- char: a tokenizer.json holding a BPE with the characters as its vocabulary and no
  merges, so each character is one token, and a Fuse decoder that joins them back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nanogpt.tokenizer import END_OF_TEXT, BPETokenizer, byte_to_unicode, tokenizer_from_dict


def save_hf_tokenizer(tokenizer_meta: dict, dest: Path, model_max_length: int) -> list[str]:
    """Write the tokenizer files for tokenizer_meta (a checkpoint's 'tokenizer') into dest;
    the names of the files written."""
    kind = tokenizer_meta.get("kind")
    config = {"model_max_length": model_max_length, "clean_up_tokenization_spaces": False}
    if kind == "gpt2":
        from nanogpt.download import GPT2_ENCODER_JSON, GPT2_VOCAB_BPE, known_file

        shutil.copyfile(known_file(GPT2_ENCODER_JSON), dest / "vocab.json")
        shutil.copyfile(known_file(GPT2_VOCAB_BPE), dest / "merges.txt")
        config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False,
                      bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT)
        files = ["vocab.json", "merges.txt"]
    else:
        tok = tokenizer_from_dict(tokenizer_meta)
        spec = byte_level_bpe_spec(tok) if kind == "bpe" else char_spec(tok.chars)
        (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False),
                                             encoding="utf-8")
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if kind == "bpe" and tok.eot_token is not None:
            config.update(bos_token=END_OF_TEXT, eos_token=END_OF_TEXT)
        files = ["tokenizer.json"]
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                encoding="utf-8")
    return files + ["tokenizer_config.json"]


def _bpe_model(vocab: dict[str, int], merges: list[list[str]], ignore_merges: bool) -> dict:
    return {"type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
            "byte_fallback": False, "ignore_merges": ignore_merges, "vocab": vocab,
            "merges": merges}


def _tokenizer_json(model: dict, pre_tokenizer: dict | None, decoder: dict,
                    added_tokens: list[dict]) -> dict:
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens, "normalizer": None, "pre_tokenizer": pre_tokenizer,
            "post_processor": None, "decoder": decoder, "model": model}


def char_spec(chars: list[str]) -> dict:
    """tokenizer.json of the char tokenizer: one token per character, joined back as is."""
    model = _bpe_model({c: i for i, c in enumerate(chars)}, [], ignore_merges=False)
    return _tokenizer_json(model, None, {"type": "Fuse"}, [])


def byte_level_bpe_spec(tok: BPETokenizer) -> dict:
    """tokenizer.json of a nanogpt BPE, encoding as tiktoken does with its ranks."""
    spell = byte_to_unicode()
    words = ["".join(spell[b] for b in token) for token in tok.token_bytes[:len(tok.ranks)]]
    merges = []
    for token in range(256, len(words)):
        raw = tok.token_bytes[token]
        splits = sorted((tok.ranks[raw[:k]], tok.ranks[raw[k:]]) for k in range(1, len(raw))
                        if raw[:k] in tok.ranks and raw[k:] in tok.ranks)
        merges += [[words[a], words[b]] for a, b in splits]
    model = _bpe_model({w: i for i, w in enumerate(words)}, merges, ignore_merges=True)
    pre_tokenizer = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tok.pattern},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": False}]}
    decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
               "use_regex": False}
    added = [{"id": tok.special_id(s), "content": s, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for s in tok.special_tokens]
    return _tokenizer_json(model, pre_tokenizer, decoder, added)
