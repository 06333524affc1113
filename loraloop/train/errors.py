"""Why training stops, worded for the person running it: a non-finite loss, CUDA out of memory,
no data to train on, a setting this machine cannot run."""

from __future__ import annotations

import math

from ..params import TrainParams


class TrainingStopped(RuntimeError):
    """Training cannot go on, for a reason the message explains to the person running it."""


def lr_at(step: int, tp: TrainParams) -> float:
    """Linear warmup, then cosine decay to 0."""
    warmup = max(1, int(tp.steps * tp.warmup_fraction))
    if step < warmup:
        return tp.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, tp.steps - warmup)
    return tp.lr * 0.5 * (1 + math.cos(math.pi * progress))


def not_finite(tp: TrainParams, round_id: str, step: int, what: str, value: float) -> TrainingStopped:
    return TrainingStopped(
        f"train@{round_id}: the {what} is {value} at step {step + 1} of {tp.steps}; nothing was written. "
        f"The usual cause is a learning rate too high for this data (train.lr is {tp.lr}, lr at this step "
        f"{lr_at(step, tp):.3g}): lower it, or train.grad_clip ({tp.grad_clip}); also check the round's data."
    )


def out_of_memory(tp: TrainParams, round_id: str) -> TrainingStopped:
    return TrainingStopped(
        f"train@{round_id}: CUDA out of memory. Knobs, from the cheapest: train.batch_size ({tp.batch_size}) "
        f"down with train.grad_accum ({tp.grad_accum}) up by the same factor (same effective batch); "
        f"train.max_length ({tp.max_length}) down; train.quantize: 4bit (now {tp.quantize}) for QLoRA; "
        f"train.lora.r ({tp.lora.r}) down; or more GPUs (train.launcher: accelerate)."
    )
