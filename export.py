"""Export a trained model for transformers: python export.py --out_dir out --to hf-model"""
import sys

from nanogpt.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
