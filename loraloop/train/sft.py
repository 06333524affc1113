"""Supervised fine-tuning, one method of a round (train.method: sft): its examples, its step, and
the reference values Rho-1 compares against (train.token_weighting: rho1, rho1_soft); the
critic's weights are computed before the loop (critic.py)."""

from __future__ import annotations

import math
import random

import torch

from ..lm.loss import collate, token_losses, tokenize
from ..params import Params
from .data import Inputs, build_mix
from .errors import TrainingStopped
from .losses import rho1_mask, soft_token_weights, weight_stats, weighted_loss


def examples(params: Params, inputs: Inputs, tok, rng: random.Random) -> tuple[list[dict], int]:
    """The kept on-policy samples mixed with train-split anchors, tokenized; and how many examples
    max_length emptied."""
    tp, r = params.train, inputs.round
    mix = build_mix(params, params.lineage(r.lineage).system_prompts, inputs.scored, r.view, rng)
    out, cut = tokenize(tok, mix, tp.max_length)
    if not out:
        raise TrainingStopped(
            f"train@{r.id}: no trainable examples ({cut} dropped because train.max_length="
            f"{tp.max_length} leaves no assistant token; empty samples and train split otherwise)"
        )
    return out, cut


def reference_values(net, rows: list[dict], pad_id: int, dev) -> torch.Tensor:
    """The reference's per-token losses [B, T'-1] of the rows over an aligned batch (T' its width),
    so a row's values are the same whichever rows it is computed with."""
    return token_losses(net, collate(rows, pad_id, dev, aligned=True))[0]


def keep_reference(rows: list[dict], values: torch.Tensor) -> None:
    """Each row's own values of reference_values, kept on the row as `ref`."""
    for j, row in enumerate(rows):
        row["ref"] = values[j, : len(row["ids"]) - 1].clone()


def stored_reference(rows: list[dict], width: int, dev) -> torch.Tensor:
    """The kept reference values laid out as a step's batch of `width` columns has its losses."""
    return laid_out(rows, "ref", width, dev)


def laid_out(rows: list[dict], key: str, width: int, dev) -> torch.Tensor:
    """Per-token values kept on each row under `key`, as a batch of `width` columns has its losses."""
    out = torch.zeros(len(rows), width - 1)
    for i, r in enumerate(rows):
        out[i, : len(r[key])] = r[key]
    return out.to(dev)


def fit_reference(values: torch.Tensor, width: int) -> torch.Tensor:
    """reference_values cut to a step's batch of `width` columns."""
    return values[:, : width - 1]


def step(r, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """The loss of one SFT micro-batch of the run `r` (Rho-1: on the tokens furthest behind the
    reference, or every token weighted by how far behind it is) and its token count."""
    from .reference import batch_reference

    tp = r.params.train
    batch = collate(rows, r.tok.pad_token_id, r.acc.device)
    head_losses = []
    if tp.mtp_heads > 1:
        tok_loss, head_losses = r.net(batch["ids"], batch["attn"], batch["mask"], with_heads=True)
        tmask = batch["mask"][:, 1:]
    else:
        tok_loss, tmask = token_losses(r.net, batch)
    token_weight = None
    if tp.token_weighting == "rho1":
        tmask = rho1_mask(tok_loss, batch_reference(r, rows, batch["ids"].shape[1]), tmask, tp.rho1_keep)
    elif tp.token_weighting == "rho1_soft":
        ref = batch_reference(r, rows, batch["ids"].shape[1])
        token_weight = soft_token_weights(tok_loss, ref, tmask, tp.rho1_temperature, tp.rho1_mix)
        r.extra.update(weight_stats(token_weight, tmask))
    elif tp.token_weighting == "critic" and "token_weight" in rows[0]:  # absent: the critic's fallback
        token_weight = laid_out(rows, "token_weight", batch["ids"].shape[1], r.acc.device)
        r.extra.update(weight_stats(token_weight, tmask))
    loss = weighted_loss(tok_loss, tmask, batch["weight"], token_weight)
    if head_losses and math.isfinite(loss.item()):  # a non-finite main loss is what the loop reports
        heads = mtp_loss(r, rows, head_losses, tmask, batch["weight"], token_weight)
        r.extra["mtp_loss"] = heads.item()  # the loop logs the loss without it: curves compare with or without heads
        loss = loss + heads
    return loss, int(batch["attn"].sum())


def mtp_loss(r, rows, head_losses, tmask, weight, token_weight) -> torch.Tensor:
    """The heads' weighted losses: head k's targets are k places further on, so the tokens that
    count (Rho-1's choice included) and their weights are the main loss's, shifted by k."""
    tp, total = r.params.train, 0.0
    for k, tok_loss in enumerate(head_losses, start=1):
        tw = None if token_weight is None else token_weight[:, k:]
        loss = weighted_loss(tok_loss, tmask[:, k:], weight, tw)
        if not math.isfinite(loss.item()):
            raise TrainingStopped(
                f"train@{r.round_id}: multi-token head {k + 1}'s loss (the token {k + 1} ahead) is {loss.item()} "
                f"in a batch of {len(rows)} examples ({', '.join(row['kind'] for row in rows)}); nothing was written. "
                f"Lower train.mtp_weight ({tp.mtp_weight}) or train.lr ({tp.lr})."
            )
        r.extra[f"mtp_loss_{k + 1}"] = loss.item()
        total = total + tp.mtp_weight * tp.mtp_decay ** (k - 1) * loss
    return total
