"""Train a byte-level BPE on your text, with Hugging Face `tokenizers` (the `bpe` extra).

Why a library: its Rust trainer learns 4,096 tokens from Tiny Shakespeare in under a second
on 2 cores, where a readable Python trainer takes minutes, and it is the trainer most
tokenizers on the Hugging Face Hub come from. Training is all it does here: the merges it
learns become a nanogpt.tokenizer.BPETokenizer (plain JSON in meta.json), which encodes with
tiktoken, several times faster than `tokenizers` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from nanogpt.errors import UserError
from nanogpt.tokenizer import END_OF_TEXT, GPT2_PATTERN, BPETokenizer, byte_to_unicode

SPECIAL_TOKENS = (END_OF_TEXT,)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # the bytes, the special tokens, one merge


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = GPT2_PATTERN,
              min_frequency: int = 2) -> BPETokenizer:
    """A byte-level BPE of at most vocab_size ids (bytes + merges + <|endoftext|>) learned
    from texts (pieces of text; a piece should end where no pre-token crosses, such as a line
    end). Text with too few repeated pairs gives fewer merges, hence a smaller vocabulary."""
    if vocab_size < MIN_VOCAB:
        raise UserError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes, "
                        f"{len(SPECIAL_TOKENS)} special token and a merge), got {vocab_size}")
    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError("training a BPE needs Hugging Face tokenizers: pip install tokenizers "
                        "tiktoken (or pip install -e '.[bpe]')") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS),
                                  min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    learned = json.loads(tok.to_str())["model"]["merges"]
    return BPETokenizer(merges_to_ids(learned), pattern, SPECIAL_TOKENS)


def merges_to_ids(learned: list) -> list[tuple[int, int]]:
    """Hugging Face merges ('Ġ t' strings or ['Ġ', 't'] pairs, in GPT-2's byte spelling)
    -> (left id, right id) pairs for BPETokenizer: merge i makes id 256 + i. A merge that
    remakes an existing token (the trainer keeps those) is dropped."""
    to_byte = {c: b for b, c in byte_to_unicode().items()}
    ids = {bytes([b]): b for b in range(256)}
    merges = []
    for merge in learned:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        a, b = (bytes(to_byte[c] for c in part) for part in (left, right))
        if a + b not in ids:
            ids[a + b] = len(ids)
            merges.append((ids[a], ids[b]))
    return merges
