"""Prepare your own text for training: a UTF-8 file, a folder of files, or an http(s) URL.

python data/prepare.py --input notes.txt --tokenizer gpt2 --out data/notes
python train.py --dataset notes ...

Writes train.bin / val.bin (first 90% / last 10% of the characters, as uint16 token ids, or
uint32 for a vocabulary over 65,536) and meta.json (the tokenizer, as JSON) into --out.
"""
import argparse
import sys

from nanogpt.data import TOKENIZERS, prepare_text
from nanogpt.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="text file, folder of text files, or URL")
    p.add_argument("--out", required=True, help="dataset directory, e.g. data/notes")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="char",
                   help="char: one token per character; gpt2: GPT-2 BPE (needs tiktoken)")
    p.add_argument("--val_fraction", type=float, default=0.1)
    args = p.parse_args(argv)
    try:
        meta = prepare_text(args.input, args.out, args.tokenizer, args.val_fraction)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"{args.tokenizer} tokenizer, vocab size {meta['vocab_size']}: "
          f"{meta['train_tokens']:,} train tokens, {meta['val_tokens']:,} val tokens "
          f"({meta['dtype']}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
