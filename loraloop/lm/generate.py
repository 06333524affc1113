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
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from .batch import Batch, attention_mask, compact, merge, next_jobs, start_batch
from .cpu_matmul import cpu_linears
from .kv_cache import ragged
from .prefill import shared_prefix


@dataclass
class Generation:
    texts: list[str]  # in the order of the prompts
    seeds: list[int]  # the sampling seed of each
    n_tokens: int  # tokens generated, end-of-turn included
    speculative: list | None = None  # drafted with multi-token heads: each prompt's SpecStats (lm/spec_stats.py)


def pick_next(logits: torch.Tensor, temperature: float, top_p: float, gens: list[torch.Generator]) -> torch.Tensor:
    """Greedy at temperature 0; otherwise nucleus sampling, each row with its own generator: one
    uniform draw per row, placed on the cumulative probabilities of the row's nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs, ids = nucleus(torch.softmax(logits.float() / temperature, -1), top_p)
    pick = inverse_cdf(probs.cpu(), torch.stack([torch.rand((), generator=g) for g in gens]))
    return ids.cpu().gather(-1, pick[:, None])[:, 0].to(logits.device)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A draw from each row of probs [rows, k] (not necessarily summing to 1) by its uniform u
    [rows] in [0, 1): the first index whose cumulative probability passes u times the row's total.
    A product that rounds onto the total takes the row's last index of nonzero probability, never a
    zero one past it (a nucleus row's padding)."""
    cum = probs.cumsum(-1)
    pick = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True)[:, 0]
    over = pick >= probs.shape[-1]
    if bool(over.any()):
        last_nonzero = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(-1)
        pick = torch.where(over, last_nonzero, pick)
    return pick


def nucleus(probs: torch.Tensor, top_p: float, k: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's smallest set of most likely tokens whose mass reaches top_p: (their
    probabilities, highest first, 0 past the set; their token ids). A full sort of the vocabulary
    per row and step cost as much as the model's forward at batch 64: the top k are taken instead,
    and a row's whole vocabulary sorted only when its set does not end inside them (a flat
    distribution, such as a random model's)."""
    vocab = probs.shape[-1]
    if top_p >= 1.0:
        return probs, torch.arange(vocab, device=probs.device).expand_as(probs)
    top, ids = probs.topk(min(k, vocab), -1)  # sorted, highest first
    short = top.sum(-1) <= top_p
    if bool(short.any()):  # those rows sorted whole; the others padded with tokens of probability 0
        top = torch.nn.functional.pad(top, (0, vocab - top.shape[-1]))
        ids = torch.nn.functional.pad(ids, (0, vocab - ids.shape[-1]))
        top[short], ids[short] = probs[short].sort(-1, descending=True)
    drop = top.cumsum(-1) - top > top_p  # keep the smallest set reaching top_p
    return top.masked_fill(drop, 0.0), ids


def stop_ids(model, tok) -> set[int]:
    ids = {tok.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return {i for i in ids if i is not None}


@dataclass
class _Picker:
    """Picks each row's next token (each job with its own seeded generator) and keeps what every
    job has made; on_token(job, token) hears each token as it is made (a server streams them),
    on_done(job, n) that a job has finished, with n tokens."""

    gens: list[torch.Generator]
    temperature: float
    top_p: float
    stop: torch.Tensor
    max_new_tokens: int
    made: list[list[int]]
    on_token: Callable[[int, int], None] | None = None
    on_done: Callable[[int, int], None] | None = None
    halt: Callable[[int], bool] | None = None  # whether a job is to stop now (its client left)

    def __call__(self, jobs: list[int], logits, ended, count):
        """Each row's next token, recorded for the rows still running, and which rows have ended
        now (end-of-turn or max_new_tokens made); count (tokens made) is updated."""
        nxt = pick_next(logits, self.temperature, self.top_p, [self.gens[j] for j in jobs])
        for j, token, was_done in zip(jobs, nxt.tolist(), ended.tolist()):
            if not was_done:
                self.made[j].append(token)
                if self.on_token is not None:
                    self.on_token(j, token)
        count += (~ended).long()
        now = ended | torch.isin(nxt, self.stop) | (count >= self.max_new_tokens)
        if self.halt is not None:
            now |= torch.tensor([self.halt(j) for j in jobs], dtype=torch.bool, device=now.device)
        if self.on_done is not None:
            for r in (now & ~ended).nonzero().flatten().tolist():
                self.on_done(jobs[r], len(self.made[jobs[r]]))
        return nxt, now


def _step(model, batch: Batch, nxt: torch.Tensor, shared: int) -> None:
    """One decode step of every row of the batch: its cache, positions and logits move on."""
    n = batch.n + 1  # cache columns once this step's token is in
    mask = attention_mask(batch.first, batch.tail_from, shared, n).to(batch.cache.layers[0].keys.dtype)
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


def _decode(
    model,
    tails: list[list[int]],
    shared: int,
    prefix_cache,
    pad: int,
    pick: _Picker,
    *,
    batch_size: int,
    share_copies: bool = True,
    refill: bool = True,
) -> list[list[int]]:
    """New tokens for every prompt tail (sorted by length), end-of-turn included, at most
    batch_size rows in the model at once. When the rows still running are down to half of that,
    the next waiting prompts are prefilled and join them, so the batch stays full rather than
    finishing its longest rows alone."""
    dev, reserve = pick.stop.device, pick.max_new_tokens
    waiting = list(range(len(tails)))
    batch, nxt, ended = None, None, None
    while True:
        running = 0 if batch is None else int((~ended).sum())
        if waiting and (running == 0 or refill and running * 2 <= batch_size):
            jobs = next_jobs(waiting, tails, batch_size - running)
            new = start_batch(model, tails, jobs, shared, prefix_cache, pad, dev, reserve, share_copies)
            new_nxt, new_ended = pick(
                new.jobs, new.logits, torch.zeros(len(jobs), dtype=torch.bool, device=dev), new.made
            )
            if running:
                kept, idx = compact(batch, (~ended).nonzero().flatten().tolist())
                batch = merge(kept, new, reserve)
                nxt = torch.cat([nxt[idx], new_nxt])
                ended = torch.cat([torch.zeros(running, dtype=torch.bool, device=dev), new_ended])
            else:
                batch, nxt, ended = new, new_nxt, new_ended
            continue  # the new rows may all have ended already, or leave room for more
        if bool(ended.all()):
            if waiting:
                continue
            return pick.made
        # Finished rows leave the batch once they are a sixteenth of it: leaving moves cache rows,
        # so it is not done for every single row.
        if int(ended.sum()) * 16 >= len(batch.jobs):
            batch, idx = compact(batch, (~ended).nonzero().flatten().tolist())
            nxt, ended = nxt[idx], ended[idx]
        _step(model, batch, nxt, shared)
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


class _Progress(contextlib.AbstractContextManager):
    """A bar of finished prompts, with the tokens made so far; closed on exit."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, desc=desc, unit="prompt", disable=not enabled)
        self.tokens = 0

    def finished(self, job: int, n: int) -> None:
        self.tokens += n
        self.bar.set_postfix(tokens=self.tokens, refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        self.bar.close()


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
    halt: Callable[[int], bool] | None = None,
    share_copies: bool = True,
    refill: bool = True,
) -> Generation:
    """Completions of `prompts`; prompt i samples with seed `seed + i` (or `seeds[i]`).
    on_token(i, token) hears prompt i's tokens as they are made, end-of-turn included; halt(i),
    asked after each, ends prompt i there (its row leaves the batch as a finished one does).
    share_copies: identical prompts are prefilled once; refill: a batch down to half its rows takes
    in waiting prompts (both off only to measure what they save)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        return Generation(texts=[], seeds=[], n_tokens=0)
    _check_full_attention(model.config, max(map(len, prompts)) + max_new_tokens)
    model.eval()
    dev = next(model.parameters()).device
    shared, prefix_cache = shared_prefix(model, prompts, dev)
    # By length; identical prompts next to each other, so a batch prefills them once.
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i], i))
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    bar = _Progress(len(prompts), desc, progress)
    decoding = {"batch_size": batch_size, "share_copies": share_copies, "refill": refill}
    pick = _Picker(
        gens=[torch.Generator().manual_seed(seeds[i]) for i in order],
        temperature=temperature,
        top_p=top_p,
        stop=torch.tensor(sorted(stop_ids(model, tok)), device=dev),
        max_new_tokens=max_new_tokens,
        made=[[] for _ in order],
        on_token=None if on_token is None else (lambda j, t: on_token(order[j], t)),
        on_done=bar.finished,
        halt=None if halt is None else (lambda j: halt(order[j])),
    )
    tails = [prompts[i][shared:] for i in order]
    with ragged(model), cpu_linears(model), bar:
        made = _decode(model, tails, shared, prefix_cache, tok.pad_token_id, pick, **decoding)
    texts = dict(zip(order, (tok.decode(ids, skip_special_tokens=True).strip() for ids in made)))
    return Generation(texts=[texts[i] for i in range(len(prompts))], seeds=seeds, n_tokens=sum(map(len, made)))


def answer_in_chunks(base_dir, adapter, prompts: list[dict], chunk: int, seed: int, **settings) -> Iterator[Generation]:
    """The base with `adapter` (a round's; None: the bare base) answering prompt conversations,
    `chunk` at a time with the model loaded once: a Generation per chunk, in order (`settings` as
    generate()); what is held at once is one chunk's, not the whole round's. Prompt i samples with
    seed `seed + i`; the prompts' common prefix is computed per chunk, so a text can differ from
    one call over all prompts where its last float bits decide a near-tie (deterministically)."""
    from .chat import prompt_ids
    from .model import load_model, load_tokenizer

    tok = load_tokenizer(base_dir)
    model = load_model(base_dir, adapter)
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        ids = [prompt_ids(tok, p["messages"], p.get("tools")) for p in part]
        yield generate(model, tok, ids, seed=seed + start, **settings)
