"""Prepare Tiny Shakespeare for character-level training.

python data/shakespeare_char/prepare.py

Downloads input.txt next to this file (unless it is already there), then writes train.bin,
val.bin (uint16 token ids, first 90% / last 10%) and meta.json (the vocabulary, as JSON).
"""
import sys
from pathlib import Path

from nanogpt.data import prepare_shakespeare_char
from nanogpt.errors import UserError

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    try:
        meta = prepare_shakespeare_char(here)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"vocab size {meta['vocab_size']}: {meta['train_tokens']:,} train tokens, "
          f"{meta['val_tokens']:,} val tokens in {here}")
