"""Sampling from a GPT: logits filtering, the KV-cached decode loop, streaming text.

Context longer than block_size. Learned positions stop at block_size, so the oldest tokens
must go. A prompt keeps its last block_size tokens. When the window is full, the next token
first drops the oldest `context_shift` tokens, leaving block_size + 1 - context_shift
(the new one included); the window then grows again until full. context_shift=1 is nanoGPT's
sliding window: every token sees exactly block_size tokens. The default, block_size // 4,
drops a quarter of the window at a time.

The KV cache follows the same rule: its slot i holds the window's token i. When the window
moves, the cache is emptied and the new window prefilled in one forward; the other tokens
are decoded one at a time. Keys thus always sit at the positions the uncached path gives
them (which reads its window through an emptied cache, so attention runs in the same dtype),
and both paths compute the same logits (to float rounding) and so the same tokens, but for
tokens tied to that rounding (rare in float32, less so in bf16: README, Sampling). The price is
one prefill of block_size + 1 - context_shift tokens per context_shift new tokens: with
context_shift=1 every token past block_size re-reads the window, as without a cache.

Decoding runs on nanogpt.inference.for_decoding(model, dtype): by default bf16 where the
device decodes faster in it, with CPU-friendly weights and a float32 KV cache on a CPU; both paths
call the model through nanogpt.decode_step (its forward, written flat).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.nn import functional as F

from nanogpt.decode_step import decode_step
from nanogpt.errors import UserError
from nanogpt.inference import DECODE_DTYPES, for_decoding, kv_cache_dtype
from nanogpt.model import GPT


class SamplingError(UserError, ValueError):
    """A bad sampling option or prompt."""


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the top_p nucleus.

    logits: (B, V). Ties with the k-th largest logit are kept. top_p keeps the smallest set
    of tokens whose probability sums to >= top_p (always at least the most likely one).
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


def draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of logits (B, V), drawn with probability softmax(logits).

    Inverse CDF: the first token whose cumulative probability reaches one uniform draw per
    row, in float64 (float32 on MPS, which has no float64). A token with logit -inf (filtered
    out) has probability 0 and is never drawn. torch.multinomial draws V exponentials per row
    instead: for GPT-2's 50k tokens, 1.1 ms against 0.16 on a 2-core CPU (the same for 200).
    """
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    cdf = torch.softmax(logits, dim=-1, dtype=dtype).cumsum_(dim=-1)  # non-decreasing
    total = cdf[:, -1:]  # 1, up to rounding
    if not math.isfinite(float(total.sum())):
        raise SamplingError("cannot sample: the logits (divided by the temperature) are not "
                            "finite; the model's weights may hold NaN or inf")
    uniform = torch.rand(total.shape, generator=generator, dtype=dtype, device=total.device)
    target = uniform.neg_().add_(1.0).mul_(total)  # in (0, total]: never a probability-0 token
    return torch.searchsorted(cdf, target).squeeze(-1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                ) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). temperature 0 is greedy (argmax).

    With top_k, the draw is among the k largest logits only (for GPT-2's 50k tokens, 0.2 ms
    instead of 1.4 ms a token on a 2-core CPU): the same distribution as drawing from the filtered
    logits, which it falls back to when ties with the k-th largest would keep more than k.
    """
    if temperature == 0.0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        values, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), largest first
        if not bool(((logits >= values[:, -1:]).sum(-1) > top_k).any()):
            chosen = draw(filter_logits(values, top_p=top_p), generator)
            return ids.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    return draw(filter_logits(logits, top_k, top_p), generator)


def validate_sampling(max_new_tokens: int, temperature: float, top_k: int | None,
                      top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise SamplingError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:  # NaN too
        raise SamplingError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise SamplingError(f"top_k must be >= 1 (or None), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise SamplingError(f"top_p must be in (0, 1], got {top_p}")


def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, generator: torch.Generator | None = None,
                    use_cache: bool = True, context_shift: int | None = None,
                    seed: int | None = None, dtype: str = "auto") -> Iterator[torch.Tensor]:
    """Iterator of max_new_tokens next-token tensors (B,), continuing the prompts idx (B, T).

    Randomness comes from generator, or a new one seeded with seed, or else torch's global
    RNG. dtype is the decoding precision: 'auto' takes bf16 where the device decodes this
    batch faster in it (samples then differ from float32 ones; see nanogpt.inference), else
    float32. Options are
    checked now; decoding runs in eval mode, on a copy of the model where the dtype or a CPU
    asks for one (nanogpt.inference.for_decoding).
    """
    validate_sampling(max_new_tokens, temperature, top_k, top_p)
    if dtype not in DECODE_DTYPES:
        raise SamplingError(f"dtype must be one of {', '.join(DECODE_DTYPES)}, got {dtype!r}")
    if idx.dim() != 2 or idx.size(0) == 0 or idx.size(1) == 0:
        raise SamplingError("the prompt must be a (batch >= 1, length >= 1) tensor of token ids")
    block_size = model.config.block_size
    shift = (block_size // 4 or 1) if context_shift is None else context_shift
    if not 1 <= shift <= block_size:
        raise SamplingError(f"context_shift must be in 1..{block_size}, got {shift}")
    if seed is not None:
        if generator is not None:
            raise SamplingError("pass seed or generator, not both")
        generator = torch.Generator(device=idx.device).manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits, temperature, top_k, top_p, generator)

    model = for_decoding(model, dtype, batch_size=idx.size(0))
    return _decode_loop(model, idx, max_new_tokens, pick, use_cache, shift)


@torch.no_grad()  # not inference_mode: its tokens could never enter autograd afterwards
def _decode_loop(model: GPT, idx: torch.Tensor, max_new_tokens: int,
                 pick: Callable[[torch.Tensor], torch.Tensor], use_cache: bool, shift: int,
                 ) -> Iterator[torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        next_logits = (_CachedDecoder(model, shift, idx.size(0)) if use_cache
                       else _UncachedDecoder(model, shift))
        tokens = idx
        for _ in range(max_new_tokens):
            nxt = pick(next_logits(tokens))
            yield nxt
            tokens = torch.cat([tokens, nxt.view(-1, 1)], dim=1)
    finally:
        model.train(was_training)


def _window_start(length: int, start: int | None, block_size: int, shift: int) -> int:
    """Start of the context window once the sequence has grown to `length` tokens.

    start is the current window start, None for the prompt (which keeps its last block_size
    tokens).
    """
    if start is None:
        return max(0, length - block_size)
    if length - start <= block_size:
        return start
    return length - (block_size + 1 - shift)


class _UncachedDecoder:
    """tokens (B, L) -> logits (B, V) of the next token, re-reading the whole window.

    The window goes through an emptied KV cache: attention then runs in the cache's dtype
    (float32 on a CPU, see nanogpt.inference.kv_cache_dtype), as in the cached decoder.
    """

    def __init__(self, model: GPT, shift: int):
        self.model, self.shift, self.start, self.caches = model, shift, None, None
        self.step = decode_step(model)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.start = _window_start(tokens.size(1), self.start, self.model.config.block_size,
                                   self.shift)
        if self.caches is None:
            self.caches = self.model.make_kv_caches(tokens.size(0), kv_cache_dtype(self.model))
        for c in self.caches:
            c.reset()
        return self.step(tokens[:, self.start:], self.caches, 0)


class _CachedDecoder:
    """Like _UncachedDecoder, but only tokens not yet in the KV cache go through the model.

    When the window moves, the cache is emptied and refilled from the new window (prefill),
    so the keys always sit at the positions the uncached decoder gives them.
    """

    def __init__(self, model: GPT, shift: int, batch_size: int):
        self.model, self.shift, self.start = model, shift, None
        self.caches = model.make_kv_caches(batch_size, kv_cache_dtype(model))
        self.cached_upto = 0  # absolute index one past the last cached token
        self.step = decode_step(model)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.size(1)
        start = _window_start(length, self.start, self.model.config.block_size, self.shift)
        if start != self.start:  # first call, or the window moved: prefill
            self.start, self.cached_upto = start, start
            for c in self.caches:
                c.reset()
        logits = self.step(tokens[:, self.cached_upto:], self.caches, self.cached_upto - start)
        self.cached_upto = length
        return logits


class TextStream:
    """Incremental decoding of one sample, with stop strings.

    push(token_id) returns the text that is now safe to show: text that could still turn
    out to be the start of a stop string, or a partial UTF-8 character, is held back.

    Each push decodes only the tokens after a settled prefix (fewer than 3 * SETTLE of them),
    so a long sample costs the same per token as a short one. The prefix moves forward only
    where decoding the unsettled tokens in two parts gives exactly their text: a tokenizer
    whose text is not the sum of its pieces there (a cleaned-up space, a partial UTF-8
    character) is split elsewhere. At 64, 128, 256, ... tokens the whole text is decoded and
    compared; should it ever differ, the stream decodes every token each push from then on.
    """

    SETTLE = 16

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.shown = 0  # characters of the decoded text already returned
        self.done = False
        self.text = ""
        self.settled, self.settled_text = 0, ""  # decode(ids[:settled]), never to change
        self.settling = True

    def push(self, token_id: int) -> str:
        if self.done:
            return ""
        self.ids.append(token_id)
        text = self._decoded()
        for s in self.stop:  # a stop string can only end in text this push changed
            cut = text.find(s, max(0, len(self.settled_text) - len(s) + 1))
            if cut != -1:
                text = text[:cut]
                self.done = True
        self.text = text
        safe = len(text) if self.done else self._safe_length(text)
        piece = text[self.shown:safe]
        self.shown = max(self.shown, safe)
        return piece

    def _decoded(self) -> str:
        """decode(self.ids), decoding afresh only the tokens after the settled prefix."""
        tail = self.decode(self.ids[self.settled:])
        text = self.settled_text + tail
        n = len(self.ids)
        if self.settling and n - self.settled >= 2 * self.SETTLE:
            split = n - self.SETTLE
            head = self.decode(self.ids[self.settled:split])
            if not head.endswith("\ufffd") and head + self.decode(self.ids[split:]) == tail:
                self.settled, self.settled_text = split, self.settled_text + head
        if self.settled and n >= 64 and n & (n - 1) == 0:  # the whole text, now and then
            full = self.decode(self.ids)
            if full != text:
                self.settled, self.settled_text, self.settling, text = 0, "", False, full
        return text

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


def generate_pieces(model: GPT, encode: Callable[[str], list[int]],
                   decode: Callable[[list[int]], str], prompt: str, *, num_samples: int = 1,
                   max_new_tokens: int = 500, stop: Sequence[str] = (), **options,
                   ) -> Iterator[tuple[int, str]]:
    """Sample num_samples continuations of prompt as one batch; yield (sample_index, piece)
    as each sample's new text becomes final.

    A sample ends at its first stop string (which is not included); generation ends when all
    have. options: temperature, top_k, top_p, seed, generator, use_cache, context_shift
    (see generate_tokens).
    """
    if num_samples < 1:
        raise SamplingError(f"num_samples must be >= 1, got {num_samples}")
    ids = encode(prompt)
    if not ids:
        raise SamplingError("the prompt is empty after encoding; give at least one token")
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=model.lm_head.weight.device)
    tokens = generate_tokens(model, idx, max_new_tokens, **options)
    return _text_pieces(tokens, [TextStream(decode, stop) for _ in range(num_samples)])


def _text_pieces(tokens: Iterator[torch.Tensor], streams: list[TextStream],
                 ) -> Iterator[tuple[int, str]]:
    with contextlib.closing(tokens):  # stopping early restores the model's mode at once
        for nxt in tokens:
            for i, tok in enumerate(nxt.tolist()):
                piece = streams[i].push(tok)
                if piece:
                    yield i, piece
            if all(s.done for s in streams):
                break
    for i, s in enumerate(streams):
        piece = s.flush()
        if piece:
            yield i, piece


def generate_text(model: GPT, encode: Callable[[str], list[int]],
                  decode: Callable[[list[int]], str], prompt: str, *, num_samples: int = 1,
                  **options) -> list[str]:
    """The new text of num_samples samples of prompt (one batch); options as generate_pieces."""
    texts = [""] * num_samples
    for i, piece in generate_pieces(model, encode, decode, prompt, num_samples=num_samples,
                                    **options):
        texts[i] += piece
    return texts


def stream(model: GPT, tokenizer, prompt: str, **options) -> Iterator[str]:
    """The new text of one sample, piece by piece as it is generated. For notebooks:

        for piece in stream(model, tok, "ROMEO:", max_new_tokens=200, stop=["\n\n"], seed=1):
            print(piece, end="", flush=True)

    tokenizer has encode and decode; options as generate_pieces (but one sample).
    """
    pieces = generate_pieces(model, tokenizer.encode, tokenizer.decode, prompt, num_samples=1,
                             **options)
    return (piece for _, piece in pieces)
