"""The sampler's key/value cache and the attention over it: cache layers over preallocated
buffers that a step writes into in place, and a decode attention for a batch whose rows come in
groups that each attend only over the cache columns they use."""

from __future__ import annotations

import functools

import torch


@functools.cache
def reserved_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _Reserved(DynamicLayer):
        """A cache layer over a preallocated buffer: the first `n` positions are filled, the rest is
        room for what comes. A step writes its positions in place instead of copying the whole
        cache (DynamicLayer concatenates, which on a CPU costs as much as attention itself)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, n: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            self._k, self._v, self._n = keys, values, n
            self._views()

        def _views(self):
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            n = self._n + key_states.shape[-2]
            if n > self._k.shape[-2]:
                raise RuntimeError(f"generation cache overflow: {n} positions, room for {self._k.shape[-2]}")
            self._k[:, :, self._n : n], self._v[:, :, self._n : n] = key_states, value_states
            self._n = n
            self._views()
            return self.keys, self.values

        def keep_rows(self, order: list[int], firsts: list[int]):
            """Row i becomes row order[i], moved in place (see compaction_order: a row is never
            overwritten before it has moved); row i is read from column firsts[i] on, so only
            that part moves. In place, because on a CPU first touching fresh memory costs more
            than the copy."""
            n = self._n
            for i, (r, f) in enumerate(zip(order, firsts)):
                if i != r:
                    self._k[i, :, f:n], self._v[i, :, f:n] = self._k[r, :, f:n], self._v[r, :, f:n]
            self._k, self._v = self._k[: len(order)], self._v[: len(order)]
            self._views()

    return _Reserved


def batch_cache(layer_class, buffers: list[tuple[torch.Tensor, torch.Tensor]], n: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [layer_class(k, v, n) for k, v in buffers]
    return cache


RAGGED = "loraloop_ragged"


@functools.cache
def ragged_attention() -> str:
    """Register an attention for decode steps over a batch cache whose rows come in groups
    (see prefill): each group attends only from the first cache column it uses, with an additive
    mask made once per step. Masked columns still cost their reads, and a decode step's attention
    is all reads. Without `ragged_spans` (prefill) it is transformers' SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def ragged_sdpa(module, query, key, value, attention_mask, ragged_spans=None, **kwargs):
        if ragged_spans is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        rows, heads, _, dim = query.shape  # one query token per row
        kv_heads = key.shape[1]
        outs = []
        for a, b, first, mask in ragged_spans:
            # The query heads sharing a key/value head are that head's queries: no repeated keys.
            q = query[a:b].reshape(b - a, kv_heads, heads // kv_heads, dim)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, key[a:b, :, first:], value[a:b, :, first:], attn_mask=mask, scale=kwargs.get("scaling")
            )
            outs.append(out.reshape(b - a, heads, 1, dim))
        return torch.cat(outs).transpose(1, 2), None

    AttentionInterface.register(RAGGED, ragged_sdpa)
    AttentionMaskInterface.register(RAGGED, sdpa_mask)
    return RAGGED
