"""Prepare your own text for training: a UTF-8 file, a folder of files, or an http(s) URL.

python data/prepare.py --input notes.txt --tokenizer bpe --vocab_size 4096 --out data/notes
python train.py --dataset notes ...

Writes train.bin / val.bin (first 90% / last 10% of the characters, as uint16 token ids, or
uint32 for a vocabulary over 65,536) and meta.json (the tokenizer, as JSON) into --out.
Files are read and tokenized in pieces: memory stays bounded whatever the size of the input.
"""
import sys
from pathlib import Path

from nanogpt.cli import OneLineParser
from nanogpt.errors import UserError, debug_requested, os_reason, run_guarded
from nanogpt.prepare import BPE_TRAIN_CHARS, DEFAULT_BPE_VOCAB, TOKENIZERS, prepare_text


def main(argv: list[str] | None = None) -> int:
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    return run_guarded(lambda: _prepare(argv), debug)


def _prepare(argv: list[str]) -> int:
    p = OneLineParser(prog="prepare.py", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="text file, folder of text files, or URL")
    p.add_argument("--out", required=True, help="dataset directory, e.g. data/notes")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="char",
                   help="char: one token per character; gpt2: GPT-2 BPE; bpe: a byte-level "
                        "BPE trained on the training part of your text (gpt2 and bpe need "
                        "pip install -e '.[bpe]')")
    p.add_argument("--vocab_size", type=int, default=None,
                   help=f"ids of the trained BPE, <|endoftext|> included (--tokenizer bpe; "
                        f"default {DEFAULT_BPE_VOCAB})")
    p.add_argument("--bpe_train_chars", type=lambda s: int(float(s)), default=BPE_TRAIN_CHARS,
                   help=f"the BPE learns from at most about this many characters of the "
                        f"training text, an even sample (default {BPE_TRAIN_CHARS:.0e})")
    p.add_argument("--val_fraction", type=float, default=0.1)
    args = p.parse_args(argv)
    local = Path(args.out) / "input.txt"
    if args.input.startswith(("http://", "https://")) and local.exists():
        print(f"using {local}, there from before (delete it to download {args.input} again)")
    try:
        meta = prepare_text(args.input, args.out, args.tokenizer, args.val_fraction,
                            args.vocab_size, args.bpe_train_chars)
    except OSError as e:  # unreadable input, a full disk, no permission to write --out
        raise UserError(f"cannot prepare {args.out}: {os_reason(e)}") from None
    asked = args.vocab_size or DEFAULT_BPE_VOCAB
    fewer = (f" (not {asked}: the text repeats too few pairs for more merges)"
             if args.tokenizer == "bpe" and meta["vocab_size"] < asked else "")
    print(f"{args.tokenizer} tokenizer, vocab size {meta['vocab_size']}{fewer}: "
          f"{meta['train_tokens']:,} train tokens, {meta['val_tokens']:,} val tokens "
          f"({meta['dtype']}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
