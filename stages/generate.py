"""Batched generation, written to waste little compute on a CPU or a GPU:

- the prefix every prompt shares (the system prompt) is run through the model once, and its
  key/value cache is copied into each batch instead of being recomputed per prompt;
- copies of one prompt (sample's samples_per_prompt) are prefilled once and their cache rows
  copied, as if one cache were forked;
- prompts are sorted by length and prefilled in groups of similar length, chosen to pad little
  without many small passes;
- in decode each group attends only over the cache columns its rows use (a batch's cache is as
  wide as its longest prompt, and masked columns still cost their reads);
- rows that have finished (end-of-turn) leave the batch, moving few cache rows, so later steps
  compute mostly live rows; and when a batch is down to half its rows, the next waiting prompts
  are prefilled and join it, so it does not finish its longest rows alone;
- the key/value cache has room reserved for the new tokens, so a step writes instead of copying;
- each row samples with its own seeded generator, so a sample depends on its seed, not on which
  other prompts shared its batch;
- on a CPU the output layer (hidden -> vocabulary) runs in blocks of vocabulary rows: the same
  dot products, a faster matmul shape; and a decode step's few rows run on oneDNN over weights
  packed once per call, which streams them from memory faster than torch's matmul does.

Greedy texts are the same as transformers' `generate` one prompt at a time gives
(tests/test_generate.py, bench/sample.py).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm


@dataclass
class Generation:
    texts: list[str]  # in the order of the prompts
    seeds: list[int]  # the sampling seed of each
    n_tokens: int  # tokens generated, end-of-turn included


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


def pick_next(logits: torch.Tensor, temperature: float, top_p: float, gens: list[torch.Generator]) -> torch.Tensor:
    """Greedy at temperature 0; otherwise nucleus sampling, each row with its own generator."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cpu = probs.cpu()
    return torch.tensor(
        [int(torch.multinomial(cpu[i], 1, generator=g)) for i, g in enumerate(gens)], device=logits.device
    )


def stop_ids(model, tok) -> set[int]:
    ids = {tok.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return {i for i in ids if i is not None}


@functools.cache
def _reserved_layer_class():
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


RAGGED = "loraloop_ragged"


@functools.cache
def _register_ragged_attention() -> str:
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


# Vocabulary rows per matmul of the output layer on a CPU. One [rows x hidden] by [vocab x hidden]
# product for the whole vocabulary ran at about half this CPU's peak; blocks of 2,048 rows took
# 33 instead of 41 ms at 64 rows and 17 instead of 23 ms at 16 (SmolLM2, 49,152 x 576).
OUTPUT_BLOCK_ROWS = 2048

# A decode step multiplies a few rows by every weight matrix, and at a few rows torch's CPU matmul
# (MKL) streams the weights at half the memory's speed. oneDNN on the same weights packed once
# into its blocked layout was 1.2-1.75x faster at 1-32 rows, about even at 64 and slower from 256
# (SmolLM2's layers streamed from memory, this 2-core CPU). So inputs of at most this many rows
# (decode steps) go to oneDNN, larger ones (prefill) to torch's matmul.
PACKED_MAX_ROWS = 64


def _can_pack(layers: list[torch.nn.Linear]) -> bool:
    """oneDNN's packed linear is in this torch build, and a packed copy of these weights fits in
    half of the memory that is free now (the copy lives while generating)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    import psutil

    copy = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    return 2 * copy <= psutil.virtual_memory().available


def _linear_forward(layer: torch.nn.Linear, block: int, pack: bool):
    """A forward for a plain nn.Linear computing `block` output features at a time; with `pack`,
    inputs of at most PACKED_MAX_ROWS rows run on oneDNN over each block's weight packed now."""
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    spans = [slice(i, i + block) for i in range(0, layer.out_features, block)]
    biases = [None if b is None else b[s] for s in spans]
    packed = (
        [torch.ops.mkldnn._reorder_linear_weight(w[s].contiguous(), PACKED_MAX_ROWS) for s in spans] if pack else None
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        if packed is not None and x.numel() <= PACKED_MAX_ROWS * x.shape[-1]:
            parts = [torch.ops.mkldnn._linear_pointwise(x, p, bias, "none", [], "") for p, bias in zip(packed, biases)]
        else:
            parts = [torch.nn.functional.linear(x, w[s], bias) for s, bias in zip(spans, biases)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    return forward


@contextlib.contextmanager
def cpu_linears(model, rows: int = OUTPUT_BLOCK_ROWS, pack: bool = True):
    """While inside, a CPU model's plain fp32 nn.Linear layers run the way generation is fastest:

    - the output layer computes its logits `rows` vocabulary entries at a time: each logit is the
      same dot product as in one matmul, so the logits are bit-identical (tests/test_generate.py);
    - with `pack` (where this torch has oneDNN and memory holds a second copy of the weights),
      inputs of at most PACKED_MAX_ROWS rows (decode steps) run on oneDNN over weights packed once
      on entry: the same products summed in another order, so the last bits of fp32 differ (greedy
      texts: the same as `generate`'s in the tests and the bench).

    A GPU model keeps its layers, and so does a layer whose forward something else (an accelerate
    hook, an outer cpu_linears) has already replaced; each layer is itself again on exit."""
    head = model.get_output_embeddings()
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and "forward" not in vars(m)
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
    ]
    pack = pack and bool(layers) and _can_pack(layers)
    chosen = [m for m in layers if pack or (m is head and m.out_features > rows)]
    for m in chosen:
        # The instance's forward, so nn.Module.__call__ and hooks still apply.
        m.forward = _linear_forward(m, rows if m is head else m.out_features, pack)
    try:
        yield
    finally:
        for m in chosen:
            del m.forward


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


def _cache(layer_class, buffers: list[tuple[torch.Tensor, torch.Tensor]], n: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [layer_class(k, v, n) for k, v in buffers]
    return cache


def copies(tails: list[list[int]]) -> list[int]:
    """The first row of each run of identical adjacent tails (copies of one prompt, as sample's
    samples_per_prompt makes them), then the row count: run u is rows firsts[u]..firsts[u+1]-1."""
    return [0] + [i for i in range(1, len(tails)) if tails[i] != tails[i - 1]] + [len(tails)]


def prefill(
    model, tails: list[list[int]], shared: int, prefix_cache, pad: int, dev, reserve: int, share_copies: bool = True
):
    """Run prompt tails (sorted by length) after the shared prefix, in groups of similar length,
    into one batch-wide cache where every prompt ends at the same column and each group starts
    where its longest prompt needs: a row of group g is [unused][prefix][padding][tail][room for
    `reserve` new tokens], with the unused columns the same for the whole group. Copies of one
    tail are prefilled once and their cache rows copied (share_copies). Returns the cache, the
    groups as (first row, end row, first used column) and each row's last logits."""
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
    layer_class = _reserved_layer_class()
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
        out = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            past_key_values=_cache(layer_class, rows, shared),
        )
        last_logits.append(out.logits[:, -1])
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
    return _cache(layer_class, buffers, end), groups, logits


def _decode_mask(first: torch.Tensor, tail_from: torch.Tensor, shared: int, width: int) -> torch.Tensor:
    """An additive mask over the cache columns, one row per prompt: 0 on its prefix (`shared`
    columns from `first`), on its tail and what follows (from `tail_from`), -inf elsewhere."""
    col = torch.arange(width, device=first.device)[None]
    seen = (col >= first[:, None]) & ((col < first[:, None] + shared) | (col >= tail_from[:, None]))
    return torch.zeros(seen.shape, device=first.device).masked_fill(~seen, float("-inf"))[:, None, None]


def compaction_order(groups, keep: list[int]):
    """Where the rows `keep` go when the others leave the batch: `order[i]` is the row that ends up
    at row i, and the groups after. A group must stay a run of rows, but its rows' order does not
    matter, so rows that can stay put do, and each group fills its gaps from its own far end:
    leaving costs a few row moves rather than shifting every row behind."""
    kept = set(keep)
    order, out = [], []
    for a, b, first in groups:
        mine = [r for r in range(a, b) if r in kept]
        lo, hi = len(order), len(order) + len(mine)
        stay = {r for r in mine if lo <= r < hi}
        movers = iter(r for r in mine if r not in stay)
        order += [i if i in stay else next(movers) for i in range(lo, hi)]
        if mine:
            out.append((lo, hi, first))
    return order, out


@dataclass
class _Batch:
    """The rows being decoded. Row r is job jobs[r]; all rows share one cache, write their next
    token at its column `n`, and come in groups of contiguous rows (first row, end row, first
    cache column the group uses)."""

    cache: object
    groups: list[tuple[int, int, int]]
    jobs: list[int]
    first: torch.Tensor  # per row: the first cache column it uses (its prefix starts there)
    tail_from: torch.Tensor  # per row: the cache column its tail starts at; new tokens follow it
    next_pos: torch.Tensor  # per row: the position of its next token, [rows, 1]
    logits: torch.Tensor  # per row: the logits its next token is picked from
    made: torch.Tensor  # per row: how many tokens it has made

    @property
    def n(self) -> int:
        return self.cache.layers[0]._n

    def take(self, idx: torch.Tensor, groups) -> _Batch:
        """The rows `idx` (a compaction_order whose cache rows have moved), with `groups`."""
        return _Batch(
            self.cache,
            groups,
            [self.jobs[r] for r in idx.tolist()],
            self.first[idx],
            self.tail_from[idx],
            self.next_pos[idx],
            self.logits[idx],
            self.made[idx],
        )


def _compact(batch: _Batch, keep: list[int]) -> tuple[_Batch, torch.Tensor]:
    """`batch` with only the rows `keep`, their cache rows moved in place, and where each row
    came from (index into the old rows, for what the caller holds per row)."""
    order, groups = compaction_order(batch.groups, keep)
    firsts = [first for a, b, first in groups for _ in range(a, b)]
    for layer in batch.cache.layers:
        layer.keep_rows(order, firsts)
    idx = torch.tensor(order, dtype=torch.long, device=batch.first.device)
    return batch.take(idx, groups), idx


def _start(model, tails, jobs: list[int], shared, prefix_cache, pad, dev, reserve: int, share_copies: bool) -> _Batch:
    """A batch of the given jobs, prefilled, with room for `reserve` new tokens."""
    ts = [tails[j] for j in jobs]
    cache, groups, logits = prefill(
        model, ts, shared, prefix_cache, pad, dev, reserve=reserve, share_copies=share_copies
    )
    end = cache.layers[0]._n
    return _Batch(
        cache=cache,
        groups=groups,
        jobs=list(jobs),
        first=torch.tensor([f for a, b, f in groups for _ in range(a, b)], device=dev),
        tail_from=torch.tensor([end - len(t) for t in ts], device=dev),
        next_pos=torch.tensor([[shared + len(t)] for t in ts], device=dev),
        logits=logits,
        made=torch.zeros(len(ts), dtype=torch.long, device=dev),
    )


def _merge(old: _Batch, new: _Batch, reserve: int) -> _Batch:
    """One batch of `old`'s rows and then `new`'s, in a cache where all of them write their next
    token at the same column: each side's columns shift right as far as the other side needs,
    and `reserve` columns of room follow."""
    write = max(side.n - min(f for a, b, f in side.groups) for side in (old, new))
    d_old, d_new = write - old.n, write - new.n
    rows, buffers = len(old.jobs) + len(new.jobs), []
    for lo, ln in zip(old.cache.layers, new.cache.layers):
        k = lo._k.new_empty((rows, lo._k.shape[1], write + reserve, lo._k.shape[3]))
        v = torch.empty_like(k)
        for side, offset, d, layer in ((old, 0, d_old, lo), (new, len(old.jobs), d_new, ln)):
            for a, b, f in side.groups:
                k[offset + a : offset + b, :, f + d : write] = layer._k[a:b, :, f : side.n]
                v[offset + a : offset + b, :, f + d : write] = layer._v[a:b, :, f : side.n]
        buffers.append((k, v))
    return _Batch(
        cache=_cache(_reserved_layer_class(), buffers, write),
        groups=[(a, b, f + d_old) for a, b, f in old.groups]
        + [(len(old.jobs) + a, len(old.jobs) + b, f + d_new) for a, b, f in new.groups],
        jobs=old.jobs + new.jobs,
        first=torch.cat([old.first + d_old, new.first + d_new]),
        tail_from=torch.cat([old.tail_from + d_old, new.tail_from + d_new]),
        next_pos=torch.cat([old.next_pos, new.next_pos]),
        logits=torch.cat([old.logits, new.logits]),
        made=torch.cat([old.made, new.made]),
    )


def _next_jobs(waiting: list[int], tails, room: int) -> list[int]:
    """Up to `room` jobs taken from the front of `waiting`, not cutting a run of copies of one
    tail in two (copies are prefilled once) unless the run alone is longer than the room."""
    k = min(room, len(waiting))
    if k < len(waiting):
        cut = k
        while cut > 0 and tails[waiting[cut]] == tails[waiting[cut - 1]]:
            cut -= 1
        k = cut or k
    jobs, waiting[:] = waiting[:k], waiting[k:]
    return jobs


def _decode(
    model,
    tails: list[list[int]],
    shared: int,
    prefix_cache,
    pad: int,
    stop: torch.Tensor,
    gens: list[torch.Generator],
    *,
    batch_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    on_token: Callable[[int, int], None] | None = None,
    on_done: Callable[[int, int], None] | None = None,
    share_copies: bool = True,
    refill: bool = True,
) -> list[list[int]]:
    """New tokens for every prompt tail (sorted by length), end-of-turn included, at most
    batch_size rows in the model at once. When the rows still running are down to half of that,
    the next waiting prompts are prefilled and join them, so the batch stays full rather than
    finishing its longest rows alone. on_token(job, token) hears each token as it is made (a
    server streams them); on_done(job, n) hears that a job has finished, with n tokens."""
    dev = stop.device
    made: list[list[int]] = [[] for _ in tails]

    def pick(jobs: list[int], logits, ended, count):
        """Each row's next token; recorded for the rows still running. Returns it and which rows
        have ended now (end-of-turn or max_new_tokens made); count (tokens made) is updated."""
        nxt = pick_next(logits, temperature, top_p, [gens[j] for j in jobs])
        for j, token, was_done in zip(jobs, nxt.tolist(), ended.tolist()):
            if not was_done:
                made[j].append(token)
                if on_token is not None:
                    on_token(j, token)
        count += (~ended).long()
        now = ended | torch.isin(nxt, stop) | (count >= max_new_tokens)
        if on_done is not None:
            for r in (now & ~ended).nonzero().flatten().tolist():
                on_done(jobs[r], len(made[jobs[r]]))
        return nxt, now

    waiting = list(range(len(tails)))
    batch, nxt, ended = None, None, None
    while True:
        running = 0 if batch is None else int((~ended).sum())
        if waiting and (running == 0 or refill and running * 2 <= batch_size):
            jobs = _next_jobs(waiting, tails, batch_size - running)
            new = _start(model, tails, jobs, shared, prefix_cache, pad, dev, max_new_tokens, share_copies)
            new_nxt, new_ended = pick(
                new.jobs, new.logits, torch.zeros(len(jobs), dtype=torch.bool, device=dev), new.made
            )
            if running:
                kept, idx = _compact(batch, (~ended).nonzero().flatten().tolist())
                batch = _merge(kept, new, max_new_tokens)
                nxt = torch.cat([nxt[idx], new_nxt])
                ended = torch.cat([torch.zeros(running, dtype=torch.bool, device=dev), new_ended])
            else:
                batch, nxt, ended = new, new_nxt, new_ended
            continue  # the new rows may all have ended already, or leave room for more
        if bool(ended.all()):
            if waiting:
                continue
            return made
        # Finished rows leave the batch once they are a sixteenth of it: leaving moves cache rows,
        # so it is not done for every single row.
        if int(ended.sum()) * 16 >= len(batch.jobs):
            batch, idx = _compact(batch, (~ended).nonzero().flatten().tolist())
            nxt, ended = nxt[idx], ended[idx]
        n = batch.n + 1  # cache columns once this step's token is in
        mask = _decode_mask(batch.first, batch.tail_from, shared, n).to(batch.cache.layers[0].keys.dtype)
        spans = [(a, b, first, mask[a:b, ..., first:n]) for a, b, first in batch.groups]
        # No attention_mask: the spans carry the masks, so transformers builds none.
        out = model(
            input_ids=nxt[:, None],
            position_ids=batch.next_pos,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
            ragged_spans=spans,
        )
        batch.cache, batch.next_pos, batch.logits = out.past_key_values, batch.next_pos + 1, out.logits[:, -1]
        nxt, ended = pick(batch.jobs, batch.logits, ended, batch.made)


def _check_full_attention(cfg, context: int) -> None:
    """The decode attention here is full causal attention: refuse models whose layers would attend
    differently within `context` tokens, rather than sample from them wrongly."""
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < context:
        raise ValueError(
            f"{cfg.model_type}: sliding-window attention ({window} tokens) is not supported by the "
            f"hf sampler at {context} tokens of context; use sample.engine: vllm"
        )
    if getattr(cfg, "attn_logit_softcapping", None):
        raise ValueError(
            f"{cfg.model_type}: attention logit soft-capping is not supported by the hf sampler; "
            "use sample.engine: vllm"
        )


@torch.inference_mode()
def generate(
    model,
    tok,
    prompts: list[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    desc: str,
    progress: bool = True,
    seeds: list[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    share_copies: bool = True,
    refill: bool = True,
) -> Generation:
    """Completions of `prompts`; prompt i samples with seed `seed + i` (or `seeds[i]`).
    on_token(i, token) hears prompt i's tokens as they are made, end-of-turn included.
    share_copies: identical prompts are prefilled once; refill: a batch down to half its rows takes
    in waiting prompts (both off only to measure what they save)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        return Generation(texts=[], seeds=[], n_tokens=0)
    _check_full_attention(model.config, max(map(len, prompts)) + max_new_tokens)
    model.eval()
    dev = next(model.parameters()).device
    pad = tok.pad_token_id
    stop = torch.tensor(sorted(stop_ids(model, tok)), device=dev)
    shared = common_prefix(prompts)
    prefix_cache = None
    if shared:
        prefix_cache = model(
            input_ids=torch.tensor([prompts[0][:shared]], device=dev), use_cache=True, logits_to_keep=1
        ).past_key_values

    # By length; identical prompts next to each other, so a batch prefills them once.
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i], i))
    texts: list[str] = [""] * len(prompts)
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    n_tokens = 0
    attn_before = model.config._attn_implementation
    model.set_attn_implementation(_register_ragged_attention())
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    made_so_far = [0]

    def finished(job: int, n: int) -> None:
        made_so_far[0] += n
        bar.set_postfix(tokens=made_so_far[0], refresh=False)
        bar.update(1)

    try:
        with cpu_linears(model):
            made = _decode(
                model,
                [prompts[i][shared:] for i in order],
                shared,
                prefix_cache,
                pad,
                stop,
                [torch.Generator().manual_seed(seeds[i]) for i in order],
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                on_token=None if on_token is None else (lambda j, t: on_token(order[j], t)),
                on_done=finished,
                share_copies=share_copies,
                refill=refill,
            )
        for i, ids in zip(order, made):
            n_tokens += len(ids)
            texts[i] = tok.decode(ids, skip_special_tokens=True).strip()
    finally:
        model.set_attn_implementation(attn_before)
        bar.close()
    return Generation(texts=texts, seeds=seeds, n_tokens=n_tokens)


def answer(base_dir, round_dir, prompts: list[dict], **settings) -> Generation:
    """A round's model (base + its adapter) answering prompt conversations; `settings` as generate()."""
    from .chat import prompt_ids
    from .model import load_round, load_tokenizer

    tok = load_tokenizer(base_dir)
    model = load_round(base_dir, round_dir)
    return generate(model, tok, [prompt_ids(tok, p["messages"], p.get("tools")) for p in prompts], **settings)
