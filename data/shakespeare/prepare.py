"""Prepare Tiny Shakespeare with GPT-2's byte-pair encoding (needs tiktoken: the `bpe` extra).

python data/shakespeare/prepare.py

Downloads input.txt next to this file (unless it is already there), then writes train.bin,
val.bin (uint16 GPT-2 token ids, first 90% / last 10% of the text) and meta.json.
"""
import sys
from pathlib import Path

from nanogpt.data import prepare_shakespeare
from nanogpt.errors import UserError

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    try:
        meta = prepare_shakespeare(here)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"GPT-2 BPE: {meta['train_tokens']:,} train tokens, {meta['val_tokens']:,} val tokens "
          f"in {here}")
