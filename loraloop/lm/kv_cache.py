"""The sampler's key/value cache and the attention over it: cache layers over preallocated
buffers that a step writes into in place, and a decode attention for a batch whose rows come in
groups that each attend only over the cache columns they use."""

from __future__ import annotations

import contextlib
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
            self.at = None  # per-row columns the next update writes (write_at), else the next ones
            self._views()

        def _views(self):
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

        def write_at(self, cols: torch.Tensor, width: int):
            """The next update writes row r's positions at columns cols[r] ([rows, positions]) and
            the cache is then `width` columns wide: rows that keep different numbers of drafted
            tokens each write after their own last kept one, over the ones they turned down."""
            self.at = (torch.arange(cols.shape[0], device=cols.device)[:, None], cols, width)

        def update(self, key_states, value_states, *args, **kwargs):
            rows, cols, width = self.at or (None, None, self._n + key_states.shape[-2])
            if width > self._k.shape[-2]:
                raise RuntimeError(f"generation cache overflow: {width} positions, room for {self._k.shape[-2]}")
            if cols is None:
                self._k[:, :, self._n : width], self._v[:, :, self._n : width] = key_states, value_states
            else:  # advanced indices around a slice put their dims first: [rows, positions, kv heads, dim]
                self._k[rows, :, cols] = key_states.transpose(1, 2)
                self._v[rows, :, cols] = value_states.transpose(1, 2)
            self.at, self._n = None, width
            self._views()
            return self.keys, self.values

        def clear_room(self):
            """Zeros in the room after the filled columns. A row that writes behind others (keeping
            fewer drafts) has room columns under its mask; masked, they still enter the attention
            product with weight 0, and 0 x NaN of unwritten memory would be NaN."""
            self._k[:, :, self._n :].zero_()
            self._v[:, :, self._n :].zero_()

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

# Query tokens per row up to which attention over a grouped-query cache runs each key/value head once
# for all the query heads that share it (a drafting step: the next token and the drafts). With a mask
# and more than one query token, transformers' SDPA repeats every key/value head for its query heads,
# copying the whole cache in every layer and step: 38% of a drafting batch of 64's time in the
# profile (README: Multi-token heads).
GROUPED_MAX_QUERIES = 16


def grouped_sdpa(query, key, value, mask, scale):
    """Attention of a few query tokens per row ([b, heads, n, d]) over keys and values with fewer
    heads ([b, kv, W, d]; query head h reads key/value head h // (heads // kv), as transformers
    repeats them), under a mask shared by the heads ([b or 1, 1, n, W]): each key/value head's
    query heads become its n x group queries. Returns [b, n, heads, d], as transformers' own."""
    b, heads, n, d = query.shape
    kv, width = key.shape[1], key.shape[2]
    group = heads // kv
    if mask is not None:
        rows = mask.shape[0]
        mask = mask[:, :, None].expand(rows, 1, group, n, width).reshape(rows, 1, group * n, width)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, kv, group * n, d), key, value, attn_mask=mask, scale=scale
    )
    return out.reshape(b, heads, n, d).transpose(1, 2)


@functools.cache
def ragged_attention() -> str:
    """Register an attention for decode steps over a batch cache whose rows come in groups
    (see prefill): each group attends only from the first cache column it uses, with an additive
    mask made once per step (a drafting step's rows have several query tokens: grouped_sdpa per
    group). Masked columns still cost their reads, and a decode step's attention is all reads.
    Without `ragged_spans`, a step that passes `grouped_step=True` (a drafting step:
    a few query tokens per row under a mask) goes to grouped_sdpa, and the rest (prefill) to
    transformers' SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def ragged_sdpa(module, query, key, value, attention_mask, ragged_spans=None, grouped_step=False, **kwargs):
        if ragged_spans is None:
            n, shared = query.shape[2], key.shape[1] < query.shape[1]
            few = 1 < n <= GROUPED_MAX_QUERIES and attention_mask is not None and attention_mask.shape[1] == 1
            if grouped_step and shared and few:
                return grouped_sdpa(query, key, value, attention_mask, kwargs.get("scaling")), None
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        rows, heads, n, dim = query.shape
        kv_heads = key.shape[1]
        if n > 1:  # a drafting step: the next token and the drafts, under per-row, per-query masks
            scale, spans = kwargs.get("scaling"), ragged_spans
            outs = [grouped_sdpa(query[a:b], key[a:b, :, f:], value[a:b, :, f:], m, scale) for a, b, f, m in spans]
            return torch.cat(outs), None
        outs = []
        for a, b, first, mask in ragged_spans:  # one query token per row
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


@contextlib.contextmanager
def ragged(model):
    """The model attends with ragged_attention inside, as it did before on exit."""
    before = model.config._attn_implementation
    model.set_attn_implementation(ragged_attention())
    try:
        yield
    finally:
        model.set_attn_implementation(before)
