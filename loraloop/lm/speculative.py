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
  from the normalized max(0, p - q), and when all are kept one more token is drawn from p. Each
  token is then distributed as the plain sampler's (tests/test_mtp.py checks the rule exactly and
  the sampler's frequencies), though the draws differ: a seed gives another text than without
  speculation. A head drafts from the state before the next token was drawn, so it cannot know
  that token: sampled text accepts fewer drafts than greedy.

One prompt at a time (decode_one: batch 1, where decoding is bound by reading the weights and a
forward of a few tokens costs about what a forward of one does), or several in one batch
(decode_batch, on the batched sampler's prefill, cache and attention), each row keeping as many
drafts as it accepts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from .cpu_matmul import cpu_linears
from .generate import Generation, compaction_order, nucleus, stop_ids
from .kv_cache import ragged
from .loss import causal_lm
from .mtp import MTPHeads
from .prefill import prefill, shared_prefix


@dataclass
class SpecStats:
    forwards: int = 0  # forwards of the model after the prompt's
    tokens: int = 0  # tokens made
    drafted: list[int] = field(default_factory=list)  # per head: drafts verified
    accepted: list[int] = field(default_factory=list)  # per head: drafts kept

    @classmethod
    def for_heads(cls, n: int) -> SpecStats:
        return cls(drafted=[0] * n, accepted=[0] * n)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forwards, 1)

    def acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)]

    def add(self, other: SpecStats) -> None:
        self.forwards += other.forwards
        self.tokens += other.tokens
        self.drafted = [a + b for a, b in zip(self.drafted, other.drafted)]
        self.accepted = [a + b for a, b in zip(self.accepted, other.accepted)]

    def summary(self) -> dict:
        return {
            "acceptance": [round(a, 4) for a in self.acceptance()],
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "forwards": self.forwards,
            "tokens": self.tokens,
        }


def crop_to(cache, length: int) -> None:
    """The cache's first `length` columns. (DynamicCache.crop's argument changed meaning across
    transformers 5.x releases: a length, then a count of columns to drop.)"""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


def target(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution the plain sampler draws from (lm/generate.py pick_next), as full rows over
    the vocabulary: softmax at the temperature, cut to the top_p nucleus, renormalized."""
    probs, ids = nucleus(torch.softmax(logits.float() / temperature, -1), top_p)  # ids: the top k only
    full = torch.zeros(logits.shape, dtype=probs.dtype, device=probs.device).scatter(-1, ids, probs)
    return full / full.sum(-1, keepdim=True)


def draw(probs: torch.Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


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
        if self.greedy:
            return int(logits.argmax(-1))
        return draw(target(logits, self.temperature, self.top_p), self.gen)

    def drafts(self, logits: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
        """A draft per head from its logits (draft_logits, n rows), and (sampling) the
        distributions they were drawn from."""
        if self.greedy:
            return logits.argmax(-1).tolist(), None
        q = target(logits, self.temperature, self.top_p)
        return [draw(row, self.gen) for row in q], q

    def verify(self, logits: torch.Tensor, drafts: list[int], q: torch.Tensor | None) -> tuple[int, int]:
        """(drafts kept, the token after them) from the verifying forward's logits (n+1 rows)."""
        if self.greedy:
            verified = logits.argmax(-1).tolist()  # verified[i]: the token after input i
            a = 0
            while a < len(drafts) and drafts[a] == verified[a]:
                a += 1
            return a, verified[a]
        return verify_sampled(target(logits, self.temperature, self.top_p), q, drafts, self.gen)


def draft_logits(heads: MTPHeads, out_layer, h: torch.Tensor) -> torch.Tensor:
    """Every head's logits at hidden states h ([..., hidden] -> [..., heads, vocab]), in one
    product with the output layer for all heads and rows: it streams the vocabulary's weights once,
    not once per head and row (2.6 against 7.9 ms for two heads, one row, SmolLM2 on this CPU)."""
    return out_layer(torch.stack([heads(h, k) for k in range(1, len(heads) + 1)], -2))


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
        """A row from the logits at the prompt's last token and its heads' (draft_logits there)."""
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
) -> list[int]:
    """New tokens for one prompt (end-of-turn included, if made). on_token hears each as it is
    kept; halt(), asked after each, ends the reply there (a client that left, a stop sequence)."""
    from transformers import DynamicCache

    lm = causal_lm(model)
    decoder, out_layer = lm.get_decoder(), lm.get_output_embeddings()
    dev, n, cache = next(model.parameters()).device, len(heads), DynamicCache()
    h = decoder(input_ids=torch.tensor([ids], device=dev), past_key_values=cache, use_cache=True)
    h = h.last_hidden_state[0, -1]
    r = _Row.start(how, out_layer(h), draft_logits(heads, out_layer, h), stop, max_new_tokens)
    heard, halted = on_token or (lambda token: None), halt or (lambda: False)
    heard(r.made[0])
    while r.live and not halted():
        step = torch.tensor([[r.made[-1], *r.drafts]], device=dev)
        hidden = decoder(input_ids=step, past_key_values=cache, use_cache=True, grouped_step=True).last_hidden_state[0]
        a = _advance(r, out_layer(hidden), stats, max_new_tokens, stop, heard, halted)
        crop_to(cache, cache.get_seq_length() - (n - a))  # the rejected drafts' columns
        r.drafts, r.q = how.drafts(draft_logits(heads, out_layer, hidden[a]))
    stats.tokens += len(r.made)
    return r.made


def _step_mask(first, tail_from, write, shared: int, q: int, width: int) -> torch.Tensor:
    """An additive mask [rows, 1, q, width] over the cache columns for a drafting step: query i of
    a row sees its prefix (`shared` columns from `first`), and its tail and tokens from
    `tail_from` up to its own column `write` + i (what it writes after them: the next token, then
    the drafts in order); -inf elsewhere, including the drafts it turned down before."""
    col = torch.arange(width, device=first.device)[None, None]
    last = (write[:, None] + torch.arange(q, device=first.device))[:, :, None]
    f = first[:, None, None]
    seen = (col >= f) & (col < f + shared) | (col >= tail_from[:, None, None]) & (col <= last)
    return torch.zeros(seen.shape, device=first.device).masked_fill(~seen, float("-inf"))[:, None]


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
) -> list[list[int]]:
    """decode_one for several prompts in one batch, on the sampler's cache (lm/prefill.py: the
    shared prefix once, tails in groups of similar length, room reserved, attention per group
    over the columns it uses). Each step writes a row's next token and drafts after its last kept
    token, over the drafts it turned down, so rows keep different numbers of drafts in one cache;
    each row's positions count its own tokens, so it sees what it would alone. Finished rows leave
    the batch as the sampler's do. on_token(row, token) hears each token as it is kept;
    halt(row), asked after each, ends that row there (as decode_one's)."""
    lm = causal_lm(model)
    decoder, out_layer = lm.get_decoder(), lm.get_output_embeddings()
    dev, n = next(model.parameters()).device, len(heads)
    shared, prefix = shared_prefix(model, prompts, dev)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i], i))
    tails = [prompts[i][shared:] for i in order]
    cache, groups, h = prefill(model, tails, shared, prefix, 0, dev, max_new_tokens + n + 1, hidden=True)
    end = cache.layers[0]._n  # every prompt ends there
    for layer in cache.layers:
        layer.clear_room()
    firsts, drafting = out_layer(h), draft_logits(heads, out_layer, h)
    rows = [_Row.start(hows[i], firsts[r], drafting[r], stop, max_new_tokens) for r, i in enumerate(order)]
    heard, halted = on_token or (lambda i, token: None), halt or (lambda i: False)
    for i, r in zip(order, rows):
        heard(i, r.made[0])
        r.live = r.live and not halted(i)
    at = list(range(len(rows)))  # batch row -> its row in `rows`
    first = torch.tensor([f for a, b, f in groups for _ in range(a, b)], device=dev)
    tail_from = torch.tensor([end - len(t) for t in tails], device=dev)
    write = torch.full((len(rows),), end, device=dev)  # per batch row: where its next token goes
    pos = torch.tensor([shared + len(t) for t in tails], device=dev)  # and that token's position
    ahead = torch.arange(n + 1, device=dev)
    while any(rows[j].live for j in at):
        keep = [b for b, j in enumerate(at) if rows[j].live]
        if (len(at) - len(keep)) * 16 >= len(at):  # finished rows leave, as in the sampler
            moved, groups = compaction_order(groups, keep)
            for layer in cache.layers:
                layer.keep_rows(moved, [f for a, b, f in groups for _ in range(a, b)])
            idx = torch.tensor(moved, device=dev)
            at, first, tail_from, write, pos = [at[b] for b in moved], first[idx], tail_from[idx], write[idx], pos[idx]
        width = int(write.max()) + n + 1
        mask = _step_mask(first, tail_from, write, shared, n + 1, width).to(cache.layers[0].keys.dtype)
        for layer in cache.layers:
            layer.write_at(write[:, None] + ahead, width)
        hidden = decoder(
            input_ids=torch.tensor([[rows[j].made[-1], *rows[j].drafts] for j in at], device=dev),
            position_ids=pos[:, None] + ahead,
            past_key_values=cache,
            use_cache=True,
            ragged_spans=[(a, b, f, mask[a:b, ..., f:width]) for a, b, f in groups],
        ).last_hidden_state
        logits, after = out_layer(hidden), {}  # after: a live row -> its hidden state after its kept drafts
        for b, j in enumerate(at):
            r = rows[j]
            if not r.live:
                continue
            i = order[j]
            hear, stopped = (lambda t, i=i: heard(i, t)), (lambda i=i: halted(i))
            a = _advance(r, logits[b], stats[i], max_new_tokens, stop, hear, stopped)
            write[b] += 1 + a
            pos[b] += 1 + a
            if r.live:
                after[j] = hidden[b, a]
        if after:  # every live row's next drafts in one product
            drafting = draft_logits(heads, out_layer, torch.stack(list(after.values())))
            for j, row_logits in zip(after, drafting):
                rows[j].drafts, rows[j].q = rows[j].how.drafts(row_logits)
    made = [None] * len(prompts)
    for i, r in zip(order, rows):
        stats[i].tokens += len(r.made)
        made[i] = r.made
    return made


def _advance(
    r: _Row,
    logits: torch.Tensor,
    stats: SpecStats,
    max_new_tokens: int,
    stop: set[int],
    heard: Callable[[int], None] = lambda token: None,
    halted: Callable[[], bool] = lambda: False,
) -> int:
    """One row's verification: its kept drafts and the token after them appended (up to an end:
    a stop token, the length, or halted() after a token heard); returns how many drafts it kept."""
    n = len(r.drafts)
    a, after = r.how.verify(logits, r.drafts, r.q)
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
) -> tuple[list[list[int]], SpecStats]:
    """New tokens of each prompt, `batch_size` prompts at a time (1: decode_one, else decode_batch;
    by length, so a batch's prompts pad little), prompt i sampled (temperature > 0) with its own
    generator seeded seeds[i]: (new tokens per prompt, the run's SpecStats); `each`, if given, gets
    each prompt's; `desc`: a progress bar."""
    if temperature > 0 and (seeds is None or len(seeds) != len(prompts)):
        raise ValueError("sampling needs one seed per prompt")
    out_layer = causal_lm(model).get_output_embeddings()
    heads = heads.to(out_layer.weight.device, out_layer.weight.dtype)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    made, stats = [None] * len(prompts), [SpecStats.for_heads(len(heads)) for _ in prompts]
    hows = [Decoding.seeded(temperature, top_p, seeds[i] if seeds else None) for i in range(len(prompts))]
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=desc is None)
    with ragged(model), cpu_linears(model):  # the sampler's attention and CPU matmuls
        for start in range(0, len(prompts), batch_size):
            part = order[start : start + batch_size]
            if len(part) == 1:
                i = part[0]
                made[i] = decode_one(model, heads, prompts[i], max_new_tokens, stop, stats[i], hows[i])
            else:
                got = decode_batch(
                    model,
                    heads,
                    [prompts[i] for i in part],
                    max_new_tokens,
                    stop,
                    [stats[i] for i in part],
                    [hows[i] for i in part],
                )
                for i, m in zip(part, got):
                    made[i] = m
            bar.update(len(part))
    bar.close()
    total = SpecStats.for_heads(len(heads))
    for st in stats:
        total.add(st)
    if each is not None:
        each.extend(stats)
    return made, total


def answer_speculative(
    base_dir: Path,
    adapter: Path,
    heads_file: Path,
    prompts: list[dict],
    chunk: int,
    seed: int,
    batch_size: int,
    **settings,
) -> Iterator[Generation]:
    """lm/generate.py answer_in_chunks, drafting with the adapter's heads: a Generation per `chunk`
    prompts, each prompt's SpecStats in its `speculative`; prompt i samples with seed `seed + i`
    (`settings`: max_new_tokens, temperature, top_p, desc)."""
    from . import mtp
    from .chat import prompt_ids
    from .model import load_model, load_tokenizer

    tok = load_tokenizer(base_dir)
    model = load_model(base_dir, adapter)
    model.eval()
    heads, stop = mtp.load(heads_file), stop_ids(model, tok)
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        ids = [prompt_ids(tok, p["messages"], p.get("tools")) for p in part]
        seeds, each = [seed + start + i for i in range(len(part))], []
        made, _ = generate_speculative(
            model, heads, ids, stop=stop, seeds=seeds, each=each, batch_size=batch_size, **settings
        )
        texts = [tok.decode(m, skip_special_tokens=True).strip() for m in made]
        yield Generation(texts=texts, seeds=seeds, n_tokens=sum(map(len, made)), speculative=each)
