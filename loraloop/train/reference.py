"""The reference DPO and Rho-1 measure against (train.reference): `base`, the base with the
adapter switched off, or `start`, the adapter this round starts from, loaded as a second, frozen
adapter on the same base. Its values do not change while training, so by default they are
computed once before the loop (train.reference_logps: precompute) instead of in every step."""

from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

from ..params import TrainParams
from ..workspace import Base, Round

REFERENCE_ADAPTER = "reference"


def uses_reference(tp: TrainParams) -> bool:
    return tp.method == "dpo" or tp.token_weighting in ("rho1", "rho1_soft")


def reference_of(tp: TrainParams, base: Base, start: Round) -> dict | None:
    """What DPO / Rho-1 measure against, by hash: the base, or the adapter the round starts from."""
    if not uses_reference(tp):
        return None
    if tp.reference == "start" and start.adapter is not None:
        return {"kind": "start", "round": start.info["id"], "adapter_hash": start.adapter_hash}
    return {"kind": tp.reference, "round": "base", "base_hash": base.hash}


@contextlib.contextmanager
def reference_model(model, reference: dict):
    """Forwards inside run the reference: the base (adapter off) or the frozen start adapter.
    PEFT's set_adapter also changes which weights require grad; they are put back as they were."""
    was_training = model.training
    model.eval()  # the reference is a fixed function: no dropout
    try:
        if reference["round"] == "base":
            with model.disable_adapter():
                yield
            return
        trainable = {p: p.requires_grad for p in model.parameters()}
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter("default")
            for p, flag in trainable.items():
                p.requires_grad_(flag)
    finally:
        model.train(was_training)


@torch.no_grad()
def reference_values(r, rows: list[dict]) -> torch.Tensor:
    """The reference's values for a batch of the run `r`'s rows, as its method lays them out."""
    with reference_model(r.model, r.reference):
        return r.method.reference_values(r.net, rows, r.tok.pad_token_id, r.acc.device)


def precompute_reference(r, plan: list) -> None:
    """The reference's values of every example the schedule `plan` uses, once, before the loop;
    kept on the examples. Every process computes the whole set in the same order, so wrappers
    that talk between processes in a forward stay in step."""
    ex, bs = r.examples, r.params.train.batch_size
    used = sorted({i for step in plan for group in step for i in group}, key=lambda i: (len(ex[i]["ids"]), i))
    for start in tqdm(range(0, len(used), bs), desc="reference", unit="batch", leave=False):
        rows = [ex[i] for i in used[start : start + bs]]
        r.method.keep_reference(rows, reference_values(r, rows).cpu())


def batch_reference(r, rows: list[dict], width: int) -> torch.Tensor:
    """The reference's values for these rows of a step's batch `width` columns wide: kept before
    the loop, or a forward now."""
    if r.params.train.reference_logps == "precompute":
        return r.method.stored_reference(rows, width, r.acc.device)
    return r.method.fit_reference(reference_values(r, rows), width)
