"""Sample from a trained GPT: python sample.py --out_dir out-shakespeare-char"""
import sys

from nanogpt.cli import sample_main

if __name__ == "__main__":
    sys.exit(sample_main())
