"""The critic's token weights in training (train.token_weighting: critic, the WMTP plan's stage 2):
the value head critic@<round> fit (loraloop/judge/critic.py) read on the frozen base's hidden
states of every example, once before the loop (the base and the head do not change while
training, so neither do the weights), and kept on the examples. A head the critic stage marked
unusable gives uniform weights, and ROUND.json says why."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from ..judge import critic
from ..lm.loss import causal_lm, collate
from ..workspace import Round
from .errors import TrainingStopped
from .losses import critic_token_weights


def load_critic(r: Round) -> tuple[critic.ValueHead | None, dict]:
    """The round's value head (None: uniform weights) and what ROUND.json records of it."""
    where = r.critic
    if where is None or not (Path(where) / critic.META).is_file():
        raise TrainingStopped(
            f"train@{r.id}: train.token_weighting: critic needs the round's value head in {where}; "
            f"run `loraloop critic --round {r.id}` first (dvc repro runs it)"
        )
    head, meta = critic.load(where)
    info = {k: meta[k] for k in ("usable", "r2", "spearman", "samples", "reason") if k in meta}
    if head is None:
        info["fallback"] = "uniform"
    return head, info


@torch.no_grad()
def example_values(model, head: critic.ValueHead, rows: list[dict], pad_id: int, dev) -> list[torch.Tensor]:
    """The head's value after each token of each row, read on the base (adapter off)."""
    batch = collate(rows, pad_id, dev)
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            body = causal_lm(model).get_decoder()
            hidden = body(input_ids=batch["ids"], attention_mask=batch["attn"], use_cache=False).last_hidden_state
    finally:
        model.train(was_training)
    values = head(hidden).cpu()
    return [values[i, : len(r["ids"])] for i, r in enumerate(rows)]


def precompute_weights(r, head: critic.ValueHead) -> None:
    """Every example's critic weights (one per predicted token, as its losses are laid out), kept
    on the example as `token_weight`."""
    cp, bs = r.params.train.critic, r.params.train.batch_size
    head.to(r.acc.device)
    order = sorted(range(len(r.examples)), key=lambda i: (len(r.examples[i]["ids"]), i))
    for start in tqdm(range(0, len(order), bs), desc="critic weights", unit="batch", leave=False):
        rows = [r.examples[i] for i in order[start : start + bs]]
        for row, v in zip(rows, example_values(r.model, head, rows, r.tok.pad_token_id, r.acc.device)):
            tmask = torch.tensor(row["mask"][1:], dtype=torch.bool)[None]
            row["token_weight"] = critic_token_weights(v[None], tmask, cp.temperature, cp.mix, cp.clip)[0]
