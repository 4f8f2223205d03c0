"""Tokenizers: characters, GPT-2's byte-pair encoding, and a byte-level BPE trained on your
text (nanogpt.bpe); both BPEs encode through tiktoken.

A tokenizer has encode(text) -> ids, decode(ids) -> text, vocab_size, and to_dict(): the
JSON that meta.json and checkpoints keep, which tokenizer_from_dict turns back into one.
token_byte_lengths(to_dict()) gives the bytes of text each id stands for (bits per byte).
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


DEFAULT_PROMPT = "\n"
"""Where samples start unless told otherwise (sample.py --start, sample_prompt)."""


def default_prompt(tokenizer) -> str:
    """DEFAULT_PROMPT, or the first character of a char vocabulary without a newline (a text
    of one line), so that sampling needs no prompt from the user."""
    if isinstance(tokenizer, CharTokenizer) and DEFAULT_PROMPT not in tokenizer.stoi:
        return tokenizer.chars[0]
    return DEFAULT_PROMPT


# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace runs. No
# pre-token crosses a newline that is followed by a non-space character, so text cut there
# encodes to the same tokens piece by piece as whole (nanogpt.textfiles cuts there).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"


def _need_tiktoken():
    try:
        import tiktoken
    except ImportError:
        raise UserError("BPE tokenizers need tiktoken: pip install tiktoken "
                        "(or pip install -e '.[bpe]')") from None
    return tiktoken


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    """tiktoken's GPT-2 encoding, built from the BPE files shipped in nanogpt/assets (no
    download; tiktoken checks their sha256)."""
    tiktoken = _need_tiktoken()
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from nanogpt.download import GPT2_ENCODER_JSON, GPT2_VOCAB_BPE, known_file

    vocab, encoder = known_file(GPT2_VOCAB_BPE), known_file(GPT2_ENCODER_JSON)
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder), GPT2_VOCAB_BPE.sha256,
                                            GPT2_ENCODER_JSON.sha256)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: GPT2Tokenizer.eot_token},
                             explicit_n_vocab=GPT2Tokenizer.vocab_size)


class GPT2Tokenizer:
    """GPT-2's byte-pair encoding, through tiktoken (the `bpe` extra)."""

    kind = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self):
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={END_OF_TEXT})

    def encode_ordinary(self, text: str) -> list[int]:
        """encode, but a literal '<|endoftext|>' in text stays text (for web documents)."""
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


    @staticmethod
    def byte_lengths() -> list[int]:
        """Bytes of text per id (<|endoftext|>: 0), from encoder.json alone (no tiktoken)."""
        from nanogpt.download import GPT2_ENCODER_JSON, known_file

        encoder = json.loads(known_file(GPT2_ENCODER_JSON).read_text(encoding="utf-8"))
        lengths = [0] * GPT2Tokenizer.vocab_size
        for token, i in encoder.items():  # one character per byte in GPT-2's spelling
            lengths[i] = 0 if i == GPT2Tokenizer.eot_token else len(token)
        return lengths


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 bytes, in which byte-level BPE files (its
    encoder.json and vocab.bpe, Hugging Face's tokenizer.json) write tokens: printable
    Latin-1 bytes stand for themselves, the others for characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable},
            **{b: chr(256 + i) for i, b in enumerate(others)}}


class BPETokenizer:
    """A byte-level BPE trained on your text (nanogpt.bpe.train_bpe).

    Ids 0-255 are the bytes, then one id per merge in the order training learned them (merge
    i joins tokens merges[i] into id 256 + i), then the special tokens (<|endoftext|> ends a
    document). Any UTF-8 text encodes and decodes back exactly. Encoding runs in tiktoken,
    with the merged tokens as its ranks; decoding needs no library.
    """

    kind = "bpe"

    def __init__(self, merges: list[tuple[int, int]] | list[list[int]],
                 pattern: str = GPT2_PATTERN, special_tokens: tuple[str, ...] = (END_OF_TEXT,)):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self.special_tokens = list(special_tokens)
        table = [bytes([b]) for b in range(256)]
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(table) and 0 <= b < len(table)):
                raise ValueError(f"merge {i} joins ids {a} and {b}, but only ids below "
                                 f"{len(table)} exist before it")
            table.append(table[a] + table[b])
        if len(set(table)) != len(table):
            raise ValueError("two merges make the same token")
        self.ranks = {token: i for i, token in enumerate(table)}
        self.token_bytes = table + [s.encode("utf-8") for s in self.special_tokens]
        self.eot_token = self.special_id(END_OF_TEXT) if END_OF_TEXT in special_tokens else None
        self._enc = None

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def special_id(self, name: str) -> int:
        return len(self.ranks) + self.special_tokens.index(name)

    def _encoding(self):
        if self._enc is None:
            tiktoken = _need_tiktoken()
            self._enc = tiktoken.Encoding(
                name=f"nanogpt-bpe-{self.vocab_size}", pat_str=self.pattern,
                mergeable_ranks=self.ranks,
                special_tokens={s: self.special_id(s) for s in self.special_tokens},
                explicit_n_vocab=self.vocab_size)
        return self._enc

    def encode(self, text: str) -> list[int]:
        """Ids of text; a special token written out in text ('<|endoftext|>') is that token."""
        return self._encoding().encode(text, allowed_special=set(self.special_tokens))

    def encode_ordinary(self, text: str) -> list[int]:
        """encode, but special tokens written out in text stay text (for files)."""
        return self._encoding().encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def byte_lengths(self) -> list[int]:
        return [len(t) for t in self.token_bytes[:len(self.ranks)]] + [0] * len(
            self.special_tokens)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pattern": self.pattern,
                "special_tokens": self.special_tokens, "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        return cls(d["merges"], d.get("pattern", GPT2_PATTERN),
                   tuple(d.get("special_tokens", (END_OF_TEXT,))))


def tokenizer_from_dict(d: dict):
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    raise UserError(f"unknown tokenizer kind {kind!r} in dataset or checkpoint metadata")


def token_byte_lengths(d: dict) -> list[int]:
    """How many bytes of UTF-8 text each id of the tokenizer d (a to_dict()) decodes to;
    special tokens count 0. Needs no tokenizer library."""
    kind = d.get("kind")
    if kind == "char":
        return [len(c.encode("utf-8", errors="surrogatepass")) for c in d["chars"]]
    if kind == "gpt2":
        return GPT2Tokenizer.byte_lengths()
    return tokenizer_from_dict(d).byte_lengths()
