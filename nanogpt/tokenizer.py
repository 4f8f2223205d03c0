"""Tokenizers: characters, and GPT-2's byte-pair encoding (through tiktoken).

A tokenizer has encode(text) -> ids, decode(ids) -> text, vocab_size, and to_dict(): the
JSON that meta.json and checkpoints keep, which tokenizer_from_dict turns back into one.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from nanogpt.errors import UserError


class UnknownCharactersError(UserError, ValueError):
    pass


class CharTokenizer:
    """One token per distinct character of the training text."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise UnknownCharactersError(
                f"characters not in the vocabulary: {', '.join(repr(c) for c in unknown)}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        return tokenizer_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace runs
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    """tiktoken's GPT-2 encoding, built from the BPE files shipped in nanogpt/assets (no
    download; tiktoken checks their sha256)."""
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        raise UserError("the GPT-2 tokenizer needs tiktoken: pip install tiktoken "
                        "(or pip install -e '.[bpe]')") from None
    from nanogpt.download import GPT2_ENCODER_JSON, GPT2_VOCAB_BPE, known_file

    vocab, encoder = known_file(GPT2_VOCAB_BPE), known_file(GPT2_ENCODER_JSON)
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder), GPT2_VOCAB_BPE.sha256,
                                            GPT2_ENCODER_JSON.sha256)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2Tokenizer.eot_token},
                             explicit_n_vocab=GPT2Tokenizer.vocab_size)


class GPT2Tokenizer:
    """GPT-2's byte-pair encoding, through tiktoken (the `bpe` extra)."""

    kind = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self):
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={"<|endoftext|>"})

    def encode_ordinary(self, text: str) -> list[int]:
        """encode, but a literal '<|endoftext|>' in text stays text (for web documents)."""
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


def tokenizer_from_dict(d: dict):
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer kind {kind!r} in dataset or checkpoint metadata")
