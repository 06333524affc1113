"""Self-speculative decoding with a round's multi-token heads (lm/mtp.py): at each step the heads
draft the next H-1 tokens from the hidden state that gave the next one, and one forward of the
adapted model over [next, drafts] verifies them all. The rejected drafts' cache columns are
cropped away (or written over by the next step), and every forward yields at least one token.

- Greedy (temperature 0): a draft is kept while it is the model's own argmax, and the model's
  token follows the last kept one, so the text is the one plain greedy decoding writes.
- Sampled (temperature > 0): speculative sampling (Leviathan et al. 2023; Chen et al. 2023). The
  target at each position is what the plain sampler draws from (softmax at the temperature, cut
  to the top_p nucleus); a draft d taken from its head's distribution q (processed the same way)
  is kept with probability min(1, p(d) / q(d)); the first one turned down is replaced by a draw
  from the normalized max(0, p - q), and when all are kept one more is drawn from p. Each token is
  then distributed as the plain sampler's (tests/test_mtp.py), though a seed gives another text
  than without speculation. A head drafts from the state before the next token was drawn, so it
  cannot know that token: sampled text accepts fewer drafts than greedy.

One prompt at a time (decode_one: batch 1, bound by reading the weights, where a forward of a few
tokens costs about what one of one does), or several in one batch (decode_batch, on the batched
sampler's prefill, cache and attention), each row keeping as many drafts as it accepts."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from .batch import attention_mask, compact, merge, next_jobs, start_batch
from .cpu_matmul import cpu_linears
from .generate import inverse_cdf, nucleus, pick_next
from .kv_cache import ragged
from .loss import causal_lm
from .mtp import MTPHeads
from .prefill import shared_prefix
from .spec_stats import SpecStats


def crop_to(cache, length: int) -> None:
    """The cache's first `length` columns (DynamicCache.crop's argument changed meaning in 5.x)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


def target(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution the plain sampler draws from (lm/generate.py pick_next), as full rows over
    the vocabulary: softmax at the temperature, cut to the top_p nucleus, renormalized."""
    probs, ids = nucleus(torch.softmax(logits.float() / temperature, -1), top_p)  # ids: the top k only
    full = torch.zeros(logits.shape, dtype=probs.dtype, device=probs.device).scatter(-1, ids, probs)
    return full / full.sum(-1, keepdim=True)


def draw(probs: torch.Tensor, gen: torch.Generator) -> int:
    """A token drawn from probs (a row over the vocabulary) by one uniform draw placed on its
    cumulative probabilities, as the plain sampler draws (lm/generate.py inverse_cdf).
    torch.multinomial draws an exponential per vocabulary entry: 1.1 ms a draw over SmolLM2's 49k
    tokens on this CPU, 22% of a sampled drafting batch of 64."""
    return int(inverse_cdf(probs.cpu()[None], torch.rand((), generator=gen)[None])[0])


def verify_sampled(p: torch.Tensor, q: torch.Tensor, drafts: list[int], gen: torch.Generator) -> tuple[int, int]:
    """Speculative sampling's rule: p[i] the target after input i (n+1 rows), q[i] the
    distribution drafts[i] was drawn from (n rows). Returns (drafts kept, the token after them)."""
    for i, d in enumerate(drafts):
        if float(torch.rand((), generator=gen)) * float(q[i, d]) < float(p[i, d]):  # kept: min(1, p/q)
            continue
        residual = (p[i] - q[i]).clamp_min(0)  # not all zero: p(d) < q(d) here
        return i, draw(residual / residual.sum(), gen)
    return len(drafts), draw(p[len(drafts)], gen)


@dataclass
class Decoding:
    """How tokens are chosen: greedy at temperature 0, else sampled from the target with `gen`."""

    temperature: float = 0.0
    top_p: float = 1.0
    gen: torch.Generator | None = None

    @classmethod
    def seeded(cls, temperature: float, top_p: float, seed: int | None) -> Decoding:
        """Greedy at temperature 0; else sampled with its own generator seeded `seed`."""
        return cls(temperature, top_p, torch.Generator().manual_seed(seed) if temperature > 0 else None)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def first(self, logits: torch.Tensor) -> int:
        """The token after the prompt, picked as the plain sampler picks it (lm/generate.py)."""
        return int(pick_next(logits[None], self.temperature, self.top_p, [self.gen])[0])

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What tokens are chosen from, per row of logits: greedy, the argmax ids themselves;
        sampling, the target distribution ([..., vocab]). Rows that decode alike get them in one
        call (scores_of): one argmax over a batch of 64 rows, not 64."""
        return logits.argmax(-1) if self.greedy else target(logits, self.temperature, self.top_p)

    def drafts(self, scores: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
        """A draft per head from its scores (of all_logits' drafts, n rows), and (sampling) the
        distributions they were drawn from."""
        if self.greedy:
            return scores.tolist(), None
        return [draw(row, self.gen) for row in scores], scores

    def verify(self, scores: torch.Tensor, drafts: list[int], q: torch.Tensor | None) -> tuple[int, int]:
        """(drafts kept, the token after them) from the scores of the verifying forward's logits
        (n+1 rows)."""
        if self.greedy:
            verified = scores.tolist()  # verified[i]: the token after input i
            a = 0
            while a < len(drafts) and drafts[a] == verified[a]:
                a += 1
            return a, verified[a]
        return verify_sampled(scores, q, drafts, self.gen)


def alike(hows: list[Decoding]) -> bool:
    """Whether rows decode alike (one temperature and top_p): what they pick from is one call."""
    return len({(h.temperature, h.top_p) for h in hows}) == 1


def scores_of(hows: list[Decoding], logits: torch.Tensor) -> torch.Tensor:
    """Each row's scores (Decoding.scores) of logits [rows, ...]: in one call when the rows decode
    alike (sampling's softmax and nucleus over the vocabulary batched, not row by row)."""
    if alike(hows):
        return hows[0].scores(logits)
    return torch.stack([h.scores(row) for h, row in zip(hows, logits)])


def all_logits(heads: MTPHeads, out_layer, h: torch.Tensor, own: bool = True, depth: int | None = None) -> torch.Tensor:
    """The model's own logits and every head's at hidden states h ([..., hidden] ->
    [..., 1 + heads, vocab]: [..., 0] the next token's, [..., k] head k's draft k places further),
    in one product with the output layer: a step of a few rows is bound by streaming its weights
    (SmolLM2: a fifth of the forward), so one read for the verified positions and the drafts from
    each costs about what the verification's alone does (a second product would read them twice).
    own=False: the heads' logits only ([..., heads, vocab]); `depth`: the first heads only."""
    drafted = [heads(h, k) for k in range(1, (len(heads) if depth is None else depth) + 1)]
    return out_layer(torch.stack([h, *drafted] if own else drafted, -2))


# A drafting batch's step computes every position's drafts with its verifying logits in one
# product with the output layer (all_logits) while that product has at most this many rows; above,
# the drafts come from the kept positions only, in a second product. SmolLM2 on this 2-core CPU,
# two heads: 1 row, 8.0 ms for the 9 rows against 5.0 + 4.7 for 3 and 2; 4 rows, about 13 against
# 16; 8 rows, 24 against 18 (the product is no longer bound by reading the weights).
FUSED_MAX_ROWS = 40

# A drafting step verifies rows x (1 + drafts) tokens in one forward: bound by reading the weights
# while they are few (the drafts ride along almost free), by compute past that (a turned-down draft
# costs what a decoded token does). So a step drafts per row as many tokens as keep it within this
# budget, none past it (vLLM's speculative_disable_by_batch_size), more as rows finish. This CPU
# (bench/sample.py --forward-costs): 3 tokens a row cost 1.09x one at 1 row, 1.36x at 8, 1.55x at
# 16, against the demo heads' 1.75-2.0 tokens per forward; 32 (two drafts to 10 rows, one to 16)
# made a batch of 64 1.00x the sampler, 48 0.96x (README: Multi-token heads). GPU: not measured.
VERIFY_TOKENS = {"cpu": 32, "cuda": 512}


def draft_depth(rows: int, heads: int, budget: int) -> int:
    """How many of its heads' drafts each of `rows` rows verifies in a step within `budget`."""
    return max(0, min(heads, budget // rows - 1))


@dataclass
class _Row:
    """One prompt being drafted for (alone, or a row of a batch): its tokens, its drafts."""

    how: Decoding
    made: list[int]
    drafts: list[int]
    q: torch.Tensor | None
    live: bool

    @classmethod
    def start(cls, how: Decoding, logits: torch.Tensor, drafting: torch.Tensor, stop: set[int], max_new_tokens: int):
        """A row from the logits at the prompt's last token and the scores of its heads' logits
        there (Decoding.scores of all_logits' drafts)."""
        first = how.first(logits)
        return cls(how, [first], *how.drafts(drafting), live=first not in stop and max_new_tokens > 1)


@torch.inference_mode()
def decode_one(
    model,
    heads: MTPHeads,
    ids: list[int],
    max_new_tokens: int,
    stop: set[int],
    stats: SpecStats,
    how: Decoding,
    on_token: Callable[[int], None] | None = None,
    halt: Callable[[], bool] | None = None,
    prefix: tuple[int, object] = (0, None),
) -> list[int]:
    """New tokens for one prompt (end-of-turn included, if made). on_token hears each as it is
    kept; halt(), asked after each, ends the reply there (a client that left, a stop sequence).
    `prefix`: (length, key/value cache or None) of the prompt's first tokens, computed once for
    prompts that share them (lm/prefill.py shared_prefix): only the rest is prefilled, on a copy."""
    from transformers import DynamicCache

    lm = causal_lm(model)
    decoder, out_layer = lm.get_decoder(), lm.get_output_embeddings()
    dev, n = next(model.parameters()).device, len(heads)
    shared, cached = prefix
    cache = DynamicCache() if cached is None else copy.deepcopy(cached)
    h = decoder(input_ids=torch.tensor([ids[shared:]], device=dev), past_key_values=cache, use_cache=True)
    h = h.last_hidden_state[0, -1]
    logits = all_logits(heads, out_layer, h)
    r = _Row.start(how, logits[0], how.scores(logits[1:]), stop, max_new_tokens)
    heard, halted = on_token or (lambda token: None), halt or (lambda: False)
    heard(r.made[0])
    while r.live and not halted():
        step = torch.tensor([[r.made[-1], *r.drafts]], device=dev)
        hidden = decoder(input_ids=step, past_key_values=cache, use_cache=True, grouped_step=True).last_hidden_state[0]
        logits = all_logits(heads, out_layer, hidden)  # the drafts from every position, kept or not
        verdict = how.verify(how.scores(logits[:, 0]), r.drafts, r.q)
        a = _advance(r, verdict, stats, max_new_tokens, stop, heard, halted)
        crop_to(cache, cache.get_seq_length() - (n - a))  # the rejected drafts' columns
        r.drafts, r.q = how.drafts(how.scores(logits[a, 1:]))
    stats.tokens += len(r.made)
    return r.made


def verify_forward(decoder, batch, ids: torch.Tensor, write: torch.Tensor, shared: int) -> torch.Tensor:
    """The decoder's hidden states [rows, q, hidden] for each row's q tokens `ids` (its next token
    and drafts) written from its own column write[row] on, each query seeing its row up to itself
    (lm/batch.py attention_mask) over the cache columns its group uses (lm/kv_cache.py)."""
    ahead = torch.arange(ids.shape[1], device=write.device)
    width, last = int(write.max()) + ids.shape[1], write[:, None] + ahead  # last: each query's column
    mask = attention_mask(batch.first, batch.tail_from, shared, width, last).to(batch.cache.layers[0].keys.dtype)
    for layer in batch.cache.layers:
        layer.write_at(last, width)
    spans = [(a, b, f, mask[a:b, ..., f:width]) for a, b, f in batch.groups]
    pos = batch.next_pos + ahead
    return decoder(
        input_ids=ids, position_ids=pos, past_key_values=batch.cache, use_cache=True, ragged_spans=spans
    ).last_hidden_state


@dataclass
class _Drafter:
    """What a drafting batch's steps share: the model's parts and heads, each prompt's row, how it
    decodes and its counts, and who hears of its tokens. Row j is prompt order[j]."""

    decoder: object
    out_layer: object
    heads: MTPHeads
    order: list[int]
    hows: list[Decoding]
    stats: list[SpecStats]
    stop: set[int]
    max_new_tokens: int
    heard: Callable[[int, int], None]
    halted: Callable[[int], bool]
    ended: Callable[[int], None]
    budget: int
    rows: list = field(init=False)

    def __post_init__(self):
        self.rows = [None] * len(self.order)

    def start_rows(self, jobs: list[int], hidden: torch.Tensor, rows: int) -> None:
        """The first token and drafts of newly prefilled jobs, from their last hidden states: as
        many drafts as a batch of `rows` lets each row verify (none past the budget: the heads'
        logits at 64 rows would triple the output layer's product for nothing)."""
        depth = draft_depth(rows, len(self.heads), self.budget)
        logits = all_logits(self.heads, self.out_layer, hidden, depth=depth)
        firsts, drafting = logits[:, 0], scores_of([self.hows[self.order[j]] for j in jobs], logits[:, 1:])
        for r, j in enumerate(jobs):
            i = self.order[j]
            row = self.rows[j] = _Row.start(self.hows[i], firsts[r], drafting[r], self.stop, self.max_new_tokens)
            self.heard(i, row.made[0])
            row.live = row.live and not self.halted(i)
            if not row.live:
                self.ended(i)

    def step(self, batch, write: torch.Tensor, shared: int) -> None:
        """One forward over every row's next token and drafts (as many as draft_depth lets every
        row verify), each written at its row's column `write`; each live row keeps what it
        accepts, and its column and position move past it."""
        rows = [self.rows[j] for j in batch.jobs]
        d = min([draft_depth(len(rows), len(self.heads), self.budget)] + [len(r.drafts) for r in rows if r.live])
        for r in rows:  # a row that ended reads its last token again: its queries go unused
            r.drafts, r.q = (r.drafts[:d], r.q if r.q is None else r.q[:d]) if r.live else ([r.made[-1]] * d, None)
        ids = torch.tensor([[r.made[-1], *r.drafts] for r in rows], device=write.device)
        hidden = verify_forward(self.decoder, batch, ids, write, shared)
        most = draft_depth(1, len(self.heads), self.budget)  # the next step's depth, at its deepest
        fused = most and len(rows) * (d + 1) * (most + 1) <= FUSED_MAX_ROWS
        logits = (
            all_logits(self.heads, self.out_layer, hidden, depth=most)
            if fused
            else self.out_layer(hidden)[..., None, :]
        )
        verdicts = _verdicts(rows, logits[:, :, 0], d)
        after = {}  # a live row -> (its batch row, its drafts kept)
        for b, (j, r) in enumerate(zip(batch.jobs, rows)):
            if not r.live:
                continue
            i = self.order[j]
            hear, stopped = (lambda t, i=i: self.heard(i, t)), (lambda i=i: self.halted(i))
            a = _advance(r, verdicts[b], self.stats[i], self.max_new_tokens, self.stop, hear, stopped)
            write[b] += 1 + a
            batch.next_pos[b] += 1 + a
            if r.live:
                after[j] = b, a
            else:
                self.ended(i)
        self.draft_next(after, hidden, logits if fused else None)

    def draft_next(self, after: dict, hidden: torch.Tensor, fused: torch.Tensor | None) -> None:
        """The live rows' next drafts (`after`: row -> its batch row and drafts kept), from the
        position after their kept drafts, as many as the next step's rows let each verify: from
        the step's fused logits, or the heads' product at those positions (none drafting none)."""
        depth = draft_depth(len(after), len(self.heads), self.budget) if after else 0
        if not depth:
            for j in after:
                self.rows[j].drafts, self.rows[j].q = [], None
            return
        if fused is not None:
            drafting = torch.stack([fused[b, a, 1 : 1 + depth] for b, a in after.values()])
        else:
            kept = torch.stack([hidden[b, a] for b, a in after.values()])
            drafting = all_logits(self.heads, self.out_layer, kept, own=False, depth=depth)
        for j, row_scores in zip(after, scores_of([self.rows[j].how for j in after], drafting)):
            self.rows[j].drafts, self.rows[j].q = self.rows[j].how.drafts(row_scores)


@torch.inference_mode()
def decode_batch(
    model,
    heads: MTPHeads,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: set[int],
    stats: list[SpecStats],
    hows: list[Decoding],
    on_token: Callable[[int, int], None] | None = None,
    halt: Callable[[int], bool] | None = None,
    batch_size: int | None = None,
    on_done: Callable[[int], None] | None = None,
    budget: int | None = None,
) -> list[list[int]]:
    """decode_one for several prompts, at most batch_size (default: all) rows at once, on the
    batched sampler's machinery (lm/batch.py: prefill, reserved cache, rows leaving and joining).
    A row writes its next token and drafts after its last kept token, over those it turned down,
    and its positions count its own tokens, so it sees what it would alone. on_token(i, token)
    hears prompt i's tokens as kept; halt(i), asked after each, ends it there; on_done(i): it ended.
    `budget`: the most tokens a step verifies (draft_depth; default VERIFY_TOKENS of the device)."""
    lm = causal_lm(model)
    dev, batch_size = next(model.parameters()).device, batch_size or len(prompts)
    shared, prefix = shared_prefix(model, prompts, dev)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i], i))
    tails = [prompts[i][shared:] for i in order]
    hear, halted, ended = on_token or (lambda i, token: None), halt or (lambda i: False), on_done or (lambda i: None)
    parts = (lm.get_decoder(), lm.get_output_embeddings(), heads)
    budget = budget or VERIFY_TOKENS["cpu" if dev.type == "cpu" else "cuda"]
    d = _Drafter(*parts, order, hows, stats, stop, max_new_tokens, hear, halted, ended, budget)
    waiting, batch, write = list(range(len(tails))), None, None  # write: per batch row, its next token's column
    while True:
        keep = [] if batch is None else [b for b, j in enumerate(batch.jobs) if d.rows[j].live]
        if waiting and (not keep or len(keep) * 2 <= batch_size):
            jobs = next_jobs(waiting, tails, batch_size - len(keep))
            reserve = max_new_tokens + len(heads) + 1
            new = start_batch(model, tails, jobs, shared, prefix, 0, dev, reserve, True, hidden=True)
            d.start_rows(jobs, new.logits, len(keep) + len(jobs))
            batch, write = _joined(batch, keep, write, new, reserve)
            for layer in batch.cache.layers:
                layer.clear_room()
            continue
        if not keep:
            break
        if (len(batch.jobs) - len(keep)) * 16 >= len(batch.jobs):  # finished rows leave, as in the sampler
            batch, idx = compact(batch, keep)
            write = write[idx]
        d.step(batch, write, shared)
    made = [None] * len(prompts)
    for j, r in enumerate(d.rows):
        stats[order[j]].tokens += len(r.made)
        made[order[j]] = r.made
    return made


def _joined(batch, keep: list[int], write, new, reserve: int):
    """`new` rows joining the rows `keep` of `batch` (or alone, when none is kept), and each row's
    write column: merging shifts the kept rows' columns as far as their group's first column moved,
    and the new rows write where the merged batch's next column is."""
    fresh = torch.full((len(new.jobs),), new.n, device=new.first.device)
    if not keep:
        return new, fresh
    kept, idx = compact(batch, keep)
    merged = merge(kept, new, reserve)
    shift = merged.first[: len(keep)] - kept.first
    return merged, torch.cat([write[idx] + shift, fresh + merged.n - new.n])


def _verdicts(rows: list[_Row], logits: torch.Tensor, d: int) -> list[tuple[int, int] | None]:
    """Each live row's (drafts kept, the token after them) from a step's logits [rows, 1 + d,
    vocab]. A step without drafts whose rows decode alike picks as the plain sampler's step does
    (pick_next: one argmax or nucleus draw over the batch, each row with its own generator), not
    each row alone over the whole vocabulary (a sampled batch of 64 that never drafted: 0.91x)."""
    hows = [r.how for r in rows]
    if d == 0 and alike(hows):
        picked = pick_next(logits[:, 0], hows[0].temperature, hows[0].top_p, [h.gen for h in hows])
        return [(0, token) for token in picked.tolist()]
    scores = scores_of(hows, logits)
    return [r.how.verify(row, r.drafts, r.q) if r.live else None for r, row in zip(rows, scores)]


def _advance(
    r: _Row,
    verdict: tuple[int, int],
    stats: SpecStats,
    max_new_tokens: int,
    stop: set[int],
    heard: Callable[[int], None] = lambda token: None,
    halted: Callable[[], bool] = lambda: False,
) -> int:
    """One row's verdict (Decoding.verify's: drafts kept, the token after them) applied: its kept
    drafts and that token appended (up to an end: a stop token, the length, or halted() after a
    token heard); returns how many drafts it kept."""
    n = len(r.drafts)
    a, after = verdict
    stats.forwards += 1
    for k in range(n):
        stats.drafted[k] += 1
        stats.accepted[k] += k < a
    for token in r.drafts[:a] + [after]:
        r.made.append(token)
        heard(token)
        if token in stop or len(r.made) >= max_new_tokens or halted():
            r.live = False
            break
    return a


def generate_speculative(
    model,
    heads: MTPHeads,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: set[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seeds: list[int] | None = None,
    each: list[SpecStats] | None = None,
    desc: str | None = None,
    batch_size: int = 1,
    budget: int | None = None,
) -> tuple[list[list[int]], SpecStats]:
    """New tokens of each prompt, one at a time (batch_size 1: decode_one) or as rows of batches of
    at most batch_size (decode_batch, prompts joining as rows finish), prompt i sampled
    (temperature > 0) with its own generator seeded seeds[i]: (new tokens per prompt, the run's
    SpecStats); `each`, if given, gets each prompt's; `desc`: a progress bar; `budget`: decode_batch's."""
    if temperature > 0 and (seeds is None or len(seeds) != len(prompts)):
        raise ValueError("sampling needs one seed per prompt")
    out_layer = causal_lm(model).get_output_embeddings()
    heads = heads.to(out_layer.weight.device, out_layer.weight.dtype)
    stats = [SpecStats.for_heads(len(heads)) for _ in prompts]
    hows = [Decoding.seeded(temperature, top_p, seeds[i] if seeds else None) for i in range(len(prompts))]
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=desc is None)
    with ragged(model), cpu_linears(model):  # the sampler's attention and CPU matmuls
        if batch_size == 1:
            # The system prompt every prompt starts with, prefilled once (one prompt: whole).
            with torch.inference_mode():
                prefix = shared_prefix(model, prompts, out_layer.weight.device) if len(prompts) > 1 else (0, None)
            made = []
            for p, st, how in zip(prompts, stats, hows):
                made.append(decode_one(model, heads, p, max_new_tokens, stop, st, how, prefix=prefix))
                bar.update(1)
        else:
            done = lambda i: bar.update(1)  # noqa: E731
            made = decode_batch(
                model, heads, prompts, max_new_tokens, stop, stats, hows, batch_size=batch_size, on_done=done,
                budget=budget,
            )  # fmt: skip
    bar.close()
    total = SpecStats.for_heads(len(heads))
    for st in stats:
        total.add(st)
    if each is not None:
        each.extend(stats)
    return made, total
