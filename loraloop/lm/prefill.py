"""Prefill of the sampler: prompts after their shared prefix, sorted by length and run in groups
of similar length into one batch-wide cache, copies of one prompt prefilled once."""

from __future__ import annotations

import torch

from .kv_cache import batch_cache, reserved_layer_class
from .loss import causal_lm


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def shared_prefix(model, prompts: list[list[int]], dev):
    """The length of the prefix every prompt shares and its key/value cache (None without one)."""
    shared = common_prefix(prompts)
    if not shared:
        return 0, None
    out = model(input_ids=torch.tensor([prompts[0][:shared]], device=dev), use_cache=True, logits_to_keep=1)
    return shared, out.past_key_values


# One prefill pass more (the weights read again, per-call overhead) costs about as much as
# computing this many more prompt tokens (measured on this CPU: 32..128 are alike).
PREFILL_GROUP_COST = 64
PREFILL_TOKENS = 2048  # most prompt tokens, padding included, run through the model at once


def split_rows(sizes: list[int], group_cost: int, cap: int | None = None) -> list[tuple[int, int]]:
    """Split rows of ascending size into runs (first, end) that minimize the padded size (each
    run costs its rows x its largest size) plus `group_cost` per run; a run stays within `cap`
    unless a single row is larger."""
    n = len(sizes)
    best, cut = [0] + [None] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            padded = (j - i) * sizes[j - 1]
            if cap is not None and padded > cap and i < j - 1:
                break
            cost = best[i] + padded + group_cost
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


def copies(tails: list[list[int]]) -> list[int]:
    """The first row of each run of identical adjacent tails (copies of one prompt, as sample's
    samples_per_prompt makes them), then the row count: run u is rows firsts[u]..firsts[u+1]-1."""
    return [0] + [i for i in range(1, len(tails)) if tails[i] != tails[i - 1]] + [len(tails)]


def prefill(
    model, tails: list[list[int]], shared: int, prefix_cache, pad, dev, reserve: int, share_copies=True, hidden=False
):
    """Run prompt tails (sorted by length) after the shared prefix, in groups of similar length,
    into one batch-wide cache where every prompt ends at the same column and each group starts
    where its longest prompt needs: a row of group g is [unused][prefix][padding][tail][room for
    `reserve` new tokens], with the unused columns the same for the whole group. Copies of one
    tail are prefilled once and their cache rows copied (share_copies). Returns the cache, the
    groups as (first row, end row, first used column) and each row's last logits (hidden: its
    last hidden state instead, which multi-token heads draft from)."""
    cfg = model.config
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    end = shared + max(len(t) for t in tails)
    size = (len(tails), kv_heads, end + reserve, head_dim)
    # Empty, not zeros: each group only ever reads the columns it wrote (see ragged attention),
    # so the unused columns are never touched, and on a CPU first touching memory is costly.
    buffers = [
        (torch.empty(size, dtype=dtype, device=dev), torch.empty(size, dtype=dtype, device=dev))
        for _ in range(cfg.num_hidden_layers)
    ]
    runs = copies(tails) if share_copies else list(range(len(tails) + 1))
    unique = [tails[i] for i in runs[:-1]]  # prefilled into the first len(unique) rows
    layer_class = reserved_layer_class()
    run = causal_lm(model).get_decoder() if hidden else model
    groups, last_logits = [], []
    for a, b in split_rows([len(t) for t in unique], PREFILL_GROUP_COST, PREFILL_TOKENS):
        group = unique[a:b]
        w = len(group[-1])
        first = end - shared - w
        rows = [(k[a:b, :, first:], v[a:b, :, first:]) for k, v in buffers]  # views: writes land in the batch cache
        if prefix_cache is not None:
            for (k, v), layer in zip(rows, prefix_cache.layers):
                k[:, :, :shared], v[:, :, :shared] = layer.keys, layer.values
        ids = torch.tensor([[pad] * (w - len(t)) + t for t in group], device=dev)
        tail_mask = torch.tensor([[0] * (w - len(t)) + [1] * len(t) for t in group], device=dev)
        attn = torch.cat([torch.ones(len(group), shared, dtype=torch.long, device=dev), tail_mask], 1)
        pos = (shared + tail_mask.cumsum(1) - 1).clamp(min=0)
        out = run(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            past_key_values=batch_cache(layer_class, rows, shared),
            **({} if hidden else {"logits_to_keep": 1}),
        )
        last_logits.append(out.last_hidden_state[:, -1] if hidden else out.logits[:, -1])
        groups.append((a, b, first))
    logits = torch.cat(last_logits)
    if len(unique) < len(tails):
        source = torch.tensor([u for u in range(len(unique)) for _ in range(runs[u], runs[u + 1])], device=dev)
        # Last group first: its rows move furthest, and the rows it reads were not yet overwritten.
        for a, b, first in reversed(groups):
            rows, src = slice(runs[a], runs[b]), source[runs[a] : runs[b]]
            for k, v in buffers:
                k[rows, :, first:end], v[rows, :, first:end] = k[src, :, first:end], v[src, :, first:end]
        groups = [(runs[a], runs[b], first) for a, b, first in groups]
        logits = logits[source]
    return batch_cache(layer_class, buffers, end), groups, logits
