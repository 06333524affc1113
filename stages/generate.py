"""Batched generation, written to waste little compute on a CPU or a GPU:

- the prefix every prompt shares (the system prompt) is run through the model once, and its
  key/value cache is copied into each batch instead of being recomputed per prompt;
- prompts are sorted by length and left-padded, so a batch pads little;
- rows that have finished (end-of-turn) leave the batch, so later steps compute mostly live rows;
- the key/value cache has room reserved for the new tokens, so a step writes instead of copying;
- each row samples with its own seeded generator, so a sample depends on its seed, not on which
  other prompts shared its batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass
class Generation:
    texts: list[str]     # in the order of the prompts
    seeds: list[int]     # the sampling seed of each
    n_tokens: int        # tokens generated, end-of-turn included


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
        drop = sorted_p.cumsum(-1) - sorted_p > top_p   # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cpu = probs.cpu()
    return torch.tensor([int(torch.multinomial(cpu[i], 1, generator=g)) for i, g in enumerate(gens)],
                        device=logits.device)


def _stop_ids(model, tok) -> set[int]:
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
        cache (DynamicLayer concatenates, which on a CPU costs as much as attention itself), and a
        buffer can be a slice of a bigger one, so a prefill group writes straight into the batch."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, n: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            self._k, self._v, self._n = keys, values, n
            self._views()

        def _views(self):
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            n = self._n + key_states.shape[-2]
            if n > self._k.shape[-2]:
                raise RuntimeError(f"generation cache overflow: {n} positions, room for {self._k.shape[-2]}")
            self._k[:, :, self._n:n], self._v[:, :, self._n:n] = key_states, value_states
            self._n = n
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices):
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

    return _Reserved


PREFILL_ROWS = 8  # prompts of similar length prefilled together, so little padding is computed


def _cache(layer_class, buffers: list[tuple[torch.Tensor, torch.Tensor]], n: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [layer_class(k, v, n) for k, v in buffers]
    return cache


def prefill(model, tails: list[list[int]], shared: int, prefix_cache, pad: int, dev, reserve: int):
    """Run prompt tails (sorted by length) after the shared prefix, in small groups of similar
    length, each writing its keys/values straight into one batch-wide cache laid out as
    [prefix][padding][tail][room for `reserve` new tokens]. Returns the cache and each row's last
    logits."""
    cfg = model.config
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    width = max(len(t) for t in tails)
    size = (len(tails), kv_heads, shared + width + reserve, head_dim)
    # Zeros, not empty: padded positions are masked, but garbage there could be NaN, and NaN
    # survives the mask.
    buffers = [(torch.zeros(size, dtype=dtype, device=dev), torch.zeros(size, dtype=dtype, device=dev))
               for _ in range(cfg.num_hidden_layers)]
    if prefix_cache is not None:
        for (k, v), layer in zip(buffers, prefix_cache.layers):
            k[:, :, :shared], v[:, :, :shared] = layer.keys, layer.values
    layer_class = _reserved_layer_class()
    last_logits = []
    for g in range(0, len(tails), PREFILL_ROWS):
        group = tails[g:g + PREFILL_ROWS]
        w = max(len(t) for t in group)
        ids = torch.tensor([[pad] * (w - len(t)) + t for t in group], device=dev)
        tail_mask = torch.tensor([[0] * (w - len(t)) + [1] * len(t) for t in group], device=dev)
        attn = torch.cat([torch.ones(len(group), shared, dtype=torch.long, device=dev),
                          torch.zeros(len(group), width - w, dtype=torch.long, device=dev), tail_mask], 1)
        pos = (shared + tail_mask.cumsum(1) - 1).clamp(min=0)
        rows = [(k[g:g + len(group)], v[g:g + len(group)]) for k, v in buffers]   # views: writes land in place
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                    past_key_values=_cache(layer_class, rows, shared + width - w))
        last_logits.append(out.logits[:, -1])
    return _cache(layer_class, buffers, shared + width), torch.cat(last_logits)


@torch.inference_mode()
def generate(model, tok, prompts: list[list[int]], *, batch_size: int, max_new_tokens: int,
             temperature: float, top_p: float, seed: int, desc: str, progress: bool = True) -> Generation:
    """Completions of `prompts`; prompt i samples with seed `seed + i`."""
    model.eval()
    dev = next(model.parameters()).device
    pad = tok.pad_token_id
    stop = torch.tensor(sorted(_stop_ids(model, tok)), device=dev)
    shared = common_prefix(prompts)
    prefix_cache = None
    if shared:
        prefix_cache = model(input_ids=torch.tensor([prompts[0][:shared]], device=dev), use_cache=True,
                             logits_to_keep=1).past_key_values

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    texts: list[str] = [""] * len(prompts)
    seeds = [seed + i for i in range(len(prompts))]
    n_tokens = 0
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        tails = [prompts[i][shared:] for i in idx]
        cache, logits = prefill(model, tails, shared, prefix_cache, pad, dev, reserve=max_new_tokens)
        width = max(len(t) for t in tails)
        # The mask spans the cached prefix too; each row's padding sits between prefix and tail.
        attn = torch.tensor([[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=dev)
        next_pos = torch.tensor([[shared + len(t)] for t in tails], device=dev)
        gens = [torch.Generator().manual_seed(seeds[i]) for i in idx]
        live = list(range(len(idx)))          # rows of this batch still in the model's batch
        ended = torch.zeros(len(idx), dtype=torch.bool, device=dev)   # of those, the finished ones
        made: list[list[int]] = [[] for _ in idx]
        for step in range(max_new_tokens):
            nxt = pick_next(logits, temperature, top_p, [gens[r] for r in live])
            for r, token, was_done in zip(live, nxt.tolist(), ended.tolist()):
                if not was_done:
                    made[r].append(token)
            ended |= torch.isin(nxt, stop)
            if step == max_new_tokens - 1 or bool(ended.all()):
                break
            # Finished rows leave the batch once they are a quarter of it: compacting the cache
            # costs a copy, so it is not done for every single row.
            if int(ended.sum()) * 4 >= len(live):
                keep = (~ended).nonzero().flatten()
                cache.batch_select_indices(keep)
                live = [live[int(k)] for k in keep]
                nxt, attn, next_pos, ended = nxt[keep], attn[keep], next_pos[keep], ended[keep]
            attn = torch.cat([attn, torch.ones(len(live), 1, dtype=attn.dtype, device=dev)], 1)
            out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos,
                        past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache, next_pos, logits = out.past_key_values, next_pos + 1, out.logits[:, -1]
        for r, i in enumerate(idx):
            n_tokens += len(made[r])
            texts[i] = tok.decode(made[r], skip_special_tokens=True).strip()
        bar.update(len(idx))
        bar.set_postfix(tokens=n_tokens)
    bar.close()
    return Generation(texts=texts, seeds=seeds, n_tokens=n_tokens)


def answer(base_dir, round_dir, prompts: list[dict], **settings) -> Generation:
    """A round's model (base + its adapter) answering prompt conversations; `settings` as generate()."""
    from .chat import prompt_ids
    from .model import load_round, load_tokenizer

    tok = load_tokenizer(base_dir)
    model = load_round(base_dir, round_dir)
    return generate(model, tok, [prompt_ids(tok, p["messages"]) for p in prompts], **settings)
