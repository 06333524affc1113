"""Direct preference optimization, one method of a round (train.method: dpo): its examples (score's
pairs and the users' feedback pairs), its step, and the reference's sequence log-probabilities."""

from __future__ import annotations

import random

import torch

from ..lm.loss import token_losses
from ..params import Params
from .data import Inputs, build_pairs, collate_pairs, tokenize_pairs
from .errors import TrainingStopped
from .losses import dpo_loss, sequence_logps


def examples(params: Params, inputs: Inputs, tok, rng: random.Random) -> tuple[list[dict], int]:
    """The round's pairs, tokenized (chosen and rejected side); and how many max_length emptied.
    (`rng` is unused: every pair trains, in the schedule's order.)"""
    tp, r = params.train, inputs.round
    pairs = build_pairs(params, params.lineage(r.lineage).system_prompts, inputs.pairs, r.view)
    out, cut = tokenize_pairs(tok, pairs, tp.max_length)
    if not out:
        feedback = "feedback pairs on" if tp.feedback_pairs else "train.feedback_pairs off"
        raise TrainingStopped(
            f"train@{r.id}: method dpo but no usable pairs (score's {inputs.pairs}, {feedback}, "
            f"{cut} cut away by max_length); for on-policy pairs set sample.samples_per_prompt >= 2 "
            "or lower score.pair_min_margin, or add feedback data"
        )
    return out, cut


def reference_values(net, rows: list[dict], pad_id: int, dev) -> torch.Tensor:
    """The reference's sequence log-probabilities [2B] of the pairs (chosen..., rejected...), over
    an aligned batch, so a pair's values are the same whichever pairs it is computed with."""
    batch = collate_pairs(rows, pad_id, dev, aligned=True)
    tok_loss, tmask = token_losses(net, batch)
    return sequence_logps(tok_loss, tmask, batch["attn"])


def keep_reference(rows: list[dict], values: torch.Tensor) -> None:
    """Each pair's (chosen, rejected) values of reference_values, kept on the pair as `ref`."""
    for j, row in enumerate(rows):
        row["ref"] = (values[j], values[len(rows) + j])


def stored_reference(rows: list[dict], width: int, dev) -> torch.Tensor:
    """The kept values laid out as reference_values gives them."""
    return torch.stack([r["ref"][0] for r in rows] + [r["ref"][1] for r in rows]).to(dev)


def fit_reference(values: torch.Tensor, width: int) -> torch.Tensor:
    """A sequence's value does not depend on its batch's width."""
    return values


def step(r, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """The DPO loss of one micro-batch of pairs of the run `r` and its token count; logs the
    reward accuracy."""
    from .reference import batch_reference

    batch = collate_pairs(rows, r.tok.pad_token_id, r.acc.device)
    tok_loss, tmask = token_losses(r.net, batch)
    policy = sequence_logps(tok_loss, tmask, batch["attn"])
    loss, r.extra["reward_accuracy"] = dpo_loss(
        policy, batch_reference(r, rows, batch["ids"].shape[1]), r.params.train.dpo_beta
    )
    return loss, int(batch["attn"].sum())
