"""Self-speculative greedy decoding with a round's multi-token heads (lm/mtp.py): at each step the
heads draft the next H-1 tokens from the hidden state that gave the next one, and one forward of
the adapted model over [next, drafts] verifies them all against its own argmax. The drafts that
match are kept with the model's own token after the last of them, so every forward yields at
least one token and the text is the one plain greedy decoding writes; the cache columns of the
rejected drafts are cropped away.

One prompt at a time (batch 1: where decoding is bound by reading the weights and a forward of a
few tokens costs about what a forward of one does)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .loss import causal_lm
from .mtp import MTPHeads


@dataclass
class SpecStats:
    forwards: int = 0  # forwards of the model after the prompt's
    tokens: int = 0  # tokens made
    drafted: list[int] = field(default_factory=list)  # per head: drafts verified
    accepted: list[int] = field(default_factory=list)  # per head: drafts kept

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forwards, 1)

    def acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)]


def crop_to(cache, length: int) -> None:
    """The cache's first `length` columns. (DynamicCache.crop's argument changed meaning across
    transformers 5.x releases: a length, then a count of columns to drop.)"""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


def _drafts(heads: MTPHeads, out_layer, h: torch.Tensor) -> list[int]:
    return [int(out_layer(heads(h, k)).argmax(-1)) for k in range(1, len(heads) + 1)]


@torch.inference_mode()
def decode_one(model, heads: MTPHeads, ids: list[int], max_new_tokens: int, stop: set[int], stats: SpecStats):
    """Greedy new tokens for one prompt (end-of-turn included, if made)."""
    from transformers import DynamicCache

    lm = causal_lm(model)
    decoder, out_layer = lm.get_decoder(), lm.get_output_embeddings()
    dev = next(model.parameters()).device
    cache = DynamicCache()
    h = decoder(input_ids=torch.tensor([ids], device=dev), past_key_values=cache, use_cache=True)
    h = h.last_hidden_state[0, -1]
    nxt, drafts = int(out_layer(h).argmax(-1)), _drafts(heads, out_layer, h)
    made = [nxt]
    n = len(heads)
    while nxt not in stop and len(made) < max_new_tokens:
        step = decoder(input_ids=torch.tensor([[nxt, *drafts]], device=dev), past_key_values=cache, use_cache=True)
        hidden = step.last_hidden_state[0]
        verified = out_layer(hidden).argmax(-1).tolist()  # verified[i]: the token after input i
        a = 0
        while a < n and drafts[a] == verified[a]:
            a += 1
        stats.forwards += 1
        for k in range(n):
            stats.drafted[k] += 1
            stats.accepted[k] += k < a
        crop_to(cache, cache.get_seq_length() - (n - a))  # the rejected drafts' columns
        for token in drafts[:a] + [verified[a]]:
            made.append(token)
            if token in stop or len(made) >= max_new_tokens:
                break
        nxt, drafts = made[-1], _drafts(heads, out_layer, hidden[a])
    stats.tokens += len(made)
    return made


def generate_speculative(model, heads: MTPHeads, prompts: list[list[int]], max_new_tokens: int, stop: set[int]):
    """decode_one for each prompt: (new tokens per prompt, the run's SpecStats)."""
    stats = SpecStats(drafted=[0] * len(heads), accepted=[0] * len(heads))
    out_layer = causal_lm(model).get_output_embeddings()
    heads = heads.to(out_layer.weight.device, out_layer.weight.dtype)
    return [decode_one(model, heads, p, max_new_tokens, stop, stats) for p in prompts], stats
