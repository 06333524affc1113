"""What the learned judges see of a reply: the base model's last hidden states averaged over the
reply's tokens (read in its context, so the same words after another question read differently),
and the rules' values. Hidden states are computed once per (base, context, reply) and kept in a
cache file keyed by that hash, so a judge retrained on grown data embeds only the new replies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..params import RuleParams, ScoreWeights
from .rules import rule_values

RULES = list(ScoreWeights.model_fields)  # the rule features' order


def item_rule_values(items: list[tuple], rules: RuleParams) -> list[dict]:
    """Every rule's value for each item: (context, reply, character_id, tools)."""
    return [rule_values(r, rules, list(c), ch, list(t) if t else None) for c, r, ch, t in items]


def rule_features(values: list[dict]) -> np.ndarray:
    """The rule values as a matrix in RULES' order. A rule that does not apply to a reply (tone
    for a character without keywords, tool_call_valid for a reply that calls nothing) reads 1:
    nothing broken."""
    rows = [[v.get(name, 1.0) for name in RULES] for v in values]
    return np.asarray(rows, dtype=np.float32).reshape(len(values), len(RULES))


def item_key(base_hash: str, max_length: int, item: tuple) -> str:
    context, reply, _, tools = item
    blob = json.dumps(
        [base_hash, max_length, list(context), reply, list(tools or [])], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def reply_ids(tok, context, reply: str, tools, max_length: int) -> tuple[list[int], int]:
    """The (context, reply) token ids, cut to max_length from the left of the context, and where
    the reply starts."""
    from ..lm.chat import encode, for_template, render

    msgs, tmpl_tools = for_template(tok, list(context), list(tools) if tools else None)
    head = render(tok, msgs, add_generation_prompt=True, tools=tmpl_tools)
    full = render(tok, msgs + [{"role": "assistant", "content": reply}], add_generation_prompt=False, tools=tmpl_tools)
    rest = full[len(head) :] if full.startswith(head) else reply
    tail = encode(tok, rest)[: max_length - 1] or [tok.eos_token_id]
    lead = encode(tok, head)[-(max_length - len(tail)) :]
    return lead + tail, len(lead)


def reply_states(model, tok, items: list[tuple], max_length: int, batch_size: int, desc: str = "embed"):
    """The base's last hidden states on each reply's tokens, read in its context: one [reply
    tokens, hidden] float32 tensor per item, in order, a batch at a time."""
    import torch
    from tqdm import tqdm

    body = model.base_model  # the decoder without the LM head: no vocab-sized logits to compute
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for start in tqdm(range(0, len(items), batch_size), desc=desc, unit="batch", disable=len(items) <= batch_size):
            encoded = [reply_ids(tok, c, r, t, max_length) for c, r, _, t in items[start : start + batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, (row, _) in enumerate(encoded):
                ids[i, : len(row)] = torch.tensor(row)
                attn[i, : len(row)] = 1
            hidden = body(input_ids=ids.to(dev), attention_mask=attn.to(dev)).last_hidden_state.float().cpu()
            for i, (row, reply_start) in enumerate(encoded):
                yield hidden[i, reply_start : len(row)]


def embed(model, tok, items: list[tuple], max_length: int, batch_size: int, desc: str = "embed") -> np.ndarray:
    """The base's last hidden state averaged over each reply's tokens: [len(items), hidden]."""
    out = [h.mean(0).numpy() for h in reply_states(model, tok, items, max_length, batch_size, desc)]
    return np.stack(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)


class FeatureCache:
    """Hidden-state features by item key, in one safetensors file (the keys in its metadata)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.rows: dict[str, np.ndarray] = {}
        self.used: set[str] = set()  # the keys this run asked for: what save() keeps
        if self.path and self.path.is_file():
            from safetensors import safe_open

            with safe_open(str(self.path), framework="numpy") as f:
                keys = json.loads(f.metadata()["keys"])
                matrix = f.get_tensor("features")
            self.rows = dict(zip(keys, matrix))

    def save(self) -> None:
        """Writes the rows this run used (the rest: replies no longer in the data)."""
        if not self.path:
            return
        from safetensors.numpy import save_file

        keys = sorted(k for k in self.rows if k in self.used)
        if not keys:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        matrix = np.stack([self.rows[k] for k in keys]).astype(np.float32)
        save_file({"features": matrix}, str(self.path), metadata={"keys": json.dumps(keys)})


def hidden_features(
    model, tok, base_hash: str, items: list[tuple], max_length: int, batch_size: int, cache: FeatureCache
) -> np.ndarray:
    """embed() through the cache: only items it has not seen are run through the model."""
    keys = [item_key(base_hash, max_length, it) for it in items]
    cache.used.update(keys)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache.rows}.items(), key=lambda kv: kv[1])
    if todo:
        fresh = embed(model, tok, [items[i] for _, i in todo], max_length, batch_size, desc="judge features")
        cache.rows.update({k: row for (k, _), row in zip(todo, fresh)})
    if not items:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.stack([cache.rows[k] for k in keys]).astype(np.float32)
