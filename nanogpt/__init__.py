"""nanogpt: train and sample small GPT models.

    from nanogpt.model import GPT, GPTConfig
    from nanogpt.checkpoint import load_model
"""

__version__ = "0.1.0"
