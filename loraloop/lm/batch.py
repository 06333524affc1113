"""The sampler's batch of rows being decoded (lm/generate.py; lm/speculative.py drafts on it
too): prompts prefilled into one cache with room reserved (start_batch), finished rows leaving with
few cache rows moved (compact), waiting prompts joining the rows still running (merge), and which
prompts join next (next_jobs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_cache import batch_cache, reserved_layer_class
from .prefill import prefill


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


def attention_mask(first: torch.Tensor, tail_from: torch.Tensor, shared: int, width: int, last=None) -> torch.Tensor:
    """An additive mask [rows, 1, queries, width] over a batch's cache columns (Batch.first and
    Batch.tail_from): 0 where a row's query sees its prefix (`shared` columns from `first`) and its
    tail and the tokens after it (from `tail_from`), -inf elsewhere. A decode step's one query per
    row sees all of them; with `last` [rows, queries], query i of a row sees up to its column
    last[row, i] only (a drafting step, lm/speculative.py: each draft sees the tokens before it, and
    none of the drafts its row turned down before, which lie past them)."""
    col = torch.arange(width, device=first.device)[None, None]
    tail = col >= tail_from[:, None, None]
    if last is not None:
        tail = tail & (col <= last[:, :, None])
    f = first[:, None, None]
    seen = (col >= f) & ((col < f + shared) | tail)
    return torch.zeros(seen.shape, device=first.device).masked_fill(~seen, float("-inf"))[:, None]


@dataclass
class Batch:
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

    def take(self, idx: torch.Tensor, groups) -> Batch:
        """The rows `idx` (a compaction_order whose cache rows have moved), with `groups`."""
        return Batch(
            self.cache,
            groups,
            [self.jobs[r] for r in idx.tolist()],
            self.first[idx],
            self.tail_from[idx],
            self.next_pos[idx],
            self.logits[idx],
            self.made[idx],
        )


def compact(batch: Batch, keep: list[int]) -> tuple[Batch, torch.Tensor]:
    """`batch` with only the rows `keep`, their cache rows moved in place, and where each row
    came from (index into the old rows, for what the caller holds per row)."""
    order, groups = compaction_order(batch.groups, keep)
    firsts = [first for a, b, first in groups for _ in range(a, b)]
    for layer in batch.cache.layers:
        layer.keep_rows(order, firsts)
    idx = torch.tensor(order, dtype=torch.long, device=batch.first.device)
    return batch.take(idx, groups), idx


def start_batch(
    model, tails, jobs: list[int], shared, prefix_cache, pad, dev, reserve: int, share_copies: bool, hidden=False
) -> Batch:
    """A batch of the given jobs, prefilled, with room for `reserve` new tokens (hidden: its
    `logits` are the rows' last hidden states, which multi-token heads draft from)."""
    ts = [tails[j] for j in jobs]
    cache, groups, logits = prefill(
        model, ts, shared, prefix_cache, pad, dev, reserve=reserve, share_copies=share_copies, hidden=hidden
    )
    end = cache.layers[0]._n
    return Batch(
        cache=cache,
        groups=groups,
        jobs=list(jobs),
        first=torch.tensor([f for a, b, f in groups for _ in range(a, b)], device=dev),
        tail_from=torch.tensor([end - len(t) for t in ts], device=dev),
        next_pos=torch.tensor([[shared + len(t)] for t in ts], device=dev),
        logits=logits,
        made=torch.zeros(len(ts), dtype=torch.long, device=dev),
    )


def merge(old: Batch, new: Batch, reserve: int) -> Batch:
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
    return Batch(
        cache=batch_cache(reserved_layer_class(), buffers, write),
        groups=[(a, b, f + d_old) for a, b, f in old.groups]
        + [(len(old.jobs) + a, len(old.jobs) + b, f + d_new) for a, b, f in new.groups],
        jobs=old.jobs + new.jobs,
        first=torch.cat([old.first + d_old, new.first + d_new]),
        tail_from=torch.cat([old.tail_from + d_old, new.tail_from + d_new]),
        next_pos=torch.cat([old.next_pos, new.next_pos]),
        logits=torch.cat([old.logits, new.logits]),
        made=torch.cat([old.made, new.made]),
    )


def next_jobs(waiting: list[int], tails, room: int) -> list[int]:
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
