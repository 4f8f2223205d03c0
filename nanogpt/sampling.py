"""Sampling from a GPT: logits filtering, the KV-cached decode loop, streaming text.

Context longer than block_size. Learned positions cannot go past block_size, so when the
context is full the oldest tokens are dropped. `context_shift` says how many go at once:
1 is nanoGPT's sliding window (every new token sees exactly block_size tokens, and the cache
must re-read the whole window for every token); the default, block_size // 4, drops a quarter
of the window at once, so the cache re-reads (prefills) the remaining 3/4 once per
block_size // 4 new tokens and decodes the rest one token at a time. Both paths, cached and
uncached, follow the same rule, so they produce the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.nn import functional as F

from nanogpt.model import GPT


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the top_p nucleus.

    logits: (B, V). top_p keeps the smallest set of tokens whose probability sums to >= top_p
    (always at least the most likely one).
    """
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly better tokens
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                ) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). temperature 0 is greedy (argmax)."""
    if temperature == 0.0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def validate_sampling(max_new_tokens: int, temperature: float, top_k: int | None,
                      top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, generator: torch.Generator | None = None,
                    use_cache: bool = True, context_shift: int | None = None,
                    ) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next-token tensors (B,), continuing the prompts idx (B, T).

    The model is put in eval mode for the duration (dropout off) and restored afterwards.
    """
    validate_sampling(max_new_tokens, temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a (batch, length >= 1) tensor of token ids")
    block_size = model.config.block_size
    shift = block_size // 4 if context_shift is None else context_shift
    if not 1 <= shift <= block_size:
        raise ValueError(f"context_shift must be in 1..{block_size}, got {shift}")
    was_training = model.training
    model.eval()
    try:
        next_logits = (_CachedDecoder(model, shift, idx.size(0)) if use_cache
                       else _UncachedDecoder(model, shift))
        tokens = idx
        for _ in range(max_new_tokens):
            nxt = sample_next(next_logits(tokens), temperature, top_k, top_p, generator)
            yield nxt
            tokens = torch.cat([tokens, nxt.view(-1, 1)], dim=1)
    finally:
        model.train(was_training)


def _window_start(length: int, start: int, block_size: int, shift: int) -> int:
    """Start of the context window once the sequence has grown to `length` tokens."""
    if length - start <= block_size:
        return start
    if start == 0 and length > block_size + 1:  # a long prompt: keep its last block_size tokens
        return length - block_size
    return length - (block_size + 1 - shift)


class _UncachedDecoder:
    """tokens (B, L) -> logits (B, V) of the next token, re-reading the whole window."""

    def __init__(self, model: GPT, shift: int):
        self.model, self.shift, self.start = model, shift, 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.start = _window_start(tokens.size(1), self.start, self.model.config.block_size,
                                   self.shift)
        logits, _ = self.model(tokens[:, self.start:])
        return logits[:, -1, :]


class _CachedDecoder:
    """Like _UncachedDecoder, but only tokens not yet in the KV cache go through the model."""

    def __init__(self, model: GPT, shift: int, batch_size: int):
        self.model, self.shift, self.start = model, shift, 0
        self.caches = model.make_kv_caches(batch_size)
        self.cached_upto = 0  # absolute index one past the last cached token

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.size(1)
        start = _window_start(length, self.start, self.model.config.block_size, self.shift)
        if start != self.start or self.cached_upto == 0:  # (re)fill the cache from the window
            self.start = start
            for c in self.caches:
                c.reset()
            logits, _ = self.model(tokens[:, start:], kv_caches=self.caches)
        else:
            logits, _ = self.model(tokens[:, self.cached_upto:], kv_caches=self.caches,
                                   start_pos=self.cached_upto - start)
        self.cached_upto = length
        return logits[:, -1, :]


class TextStream:
    """Incremental decoding of one sample, with stop strings.

    push(token_id) returns the text that is now safe to show: text that could still turn
    out to be the start of a stop string, or a partial UTF-8 character, is held back.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.shown = 0  # characters of the decoded text already returned
        self.done = False
        self.text = ""

    def push(self, token_id: int) -> str:
        if self.done:
            return ""
        self.ids.append(token_id)
        text = self.decode(self.ids)
        for s in self.stop:
            cut = text.find(s)
            if cut != -1:
                text = text[:cut]
                self.done = True
        self.text = text
        safe = len(text) if self.done else self._safe_length(text)
        piece = text[self.shown:safe]
        self.shown = max(self.shown, safe)
        return piece

    def flush(self) -> str:
        """Whatever is still held back (call at the end of generation)."""
        piece = self.text[self.shown:]
        self.shown = len(self.text)
        return piece

    def _safe_length(self, text: str) -> int:
        safe = len(text)
        while safe > self.shown and text[safe - 1] == "\ufffd":  # partial multi-byte character
            safe -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        return max(safe, self.shown)


def generate_text(model: GPT, encode: Callable[[str], list[int]],
                  decode: Callable[[list[int]], str], prompt: str, *, num_samples: int = 1,
                  max_new_tokens: int = 500, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None,
                  stop: Sequence[str] = (), generator: torch.Generator | None = None,
                  use_cache: bool = True, on_text: Callable[[int, str], None] | None = None,
                  ) -> list[str]:
    """Sample num_samples continuations of prompt as one batch; return their new text.

    on_text(sample_index, piece) is called as text becomes final (for streaming). A sample
    ends at its first stop string (which is not included); generation stops when all have.
    """
    ids = encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty after encoding; give at least one token")
    device = model.lm_head.weight.device
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    streams = [TextStream(decode, stop) for _ in range(num_samples)]
    for nxt in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p,
                               generator, use_cache):
        for i, tok in enumerate(nxt.tolist()):
            piece = streams[i].push(tok)
            if piece and on_text is not None:
                on_text(i, piece)
        if all(s.done for s in streams):
            break
    for i, s in enumerate(streams):
        piece = s.flush()
        if piece and on_text is not None:
            on_text(i, piece)
    return [s.text for s in streams]
