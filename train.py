"""Train a GPT: python train.py --config configs/shakespeare_char.py [--key=value ...]"""
import sys

from nanogpt.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
