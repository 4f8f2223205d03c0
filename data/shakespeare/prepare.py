"""Prepare Tiny Shakespeare with GPT-2's byte-pair encoding (needs tiktoken: the `bpe` extra).

python data/shakespeare/prepare.py

Uses input.txt next to this file when you put one there, else the copy shipped with nanogpt;
writes train.bin, val.bin (uint16 GPT-2 token ids, first 90% / last 10% of the text) and
meta.json. train.py runs this itself when the files are missing.
"""
import sys
from pathlib import Path

from nanogpt.cli import prepare_known_main

if __name__ == "__main__":
    sys.exit(prepare_known_main(Path(__file__).resolve().parent))
