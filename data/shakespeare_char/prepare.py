"""Prepare Tiny Shakespeare for character-level training.

python data/shakespeare_char/prepare.py

Uses input.txt next to this file when you put one there, else the copy shipped with nanogpt;
writes train.bin, val.bin (uint16 token ids, first 90% / last 10%) and meta.json (the
vocabulary, as JSON). train.py runs this itself when the files are missing.
"""
import sys
from pathlib import Path

from nanogpt.cli import prepare_known_main

if __name__ == "__main__":
    sys.exit(prepare_known_main(Path(__file__).resolve().parent))
