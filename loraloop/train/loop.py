"""train@<round>: LoRA training of the round's adapter, the loop read top to bottom: one optimizer
step over a process's micro-batches, the steps with their eval loss and checkpoints, and the
finish that writes the adapter with ROUND.json. What it trains on, the model and the reference
are built before it (setup.py); the two methods' steps are in sft.py and dpo.py.

- method sft: the kept on-policy samples (weighted by score) mixed with the train split, loss on
  assistant tokens only (end-of-turn included); token_weighting rho1 keeps only the tokens where
  the model is furthest behind the reference (Rho-1 selective language modelling).
- method dpo: score's best-vs-worst pairs and the users' feedback pairs (bad reply vs correction).
- The same loop runs on CPU, one GPU, or several under `accelerate launch` (train.launcher).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..files import replacing, sha256_file, write_json
from ..lm.loss import split_loss
from ..params import Params
from ..workspace import Base, Round
from .checkpoints import save_checkpoint
from .data import Inputs
from .errors import lr_at, not_finite, out_of_memory
from .heads import train_heads_alone
from .model import stable_adapter_config
from .setup import Run, setup


def optimizer_step(r: Run, step: int) -> tuple[float, int]:
    """One optimizer step over this process's micro-batches; gradients are all-reduced between
    processes only on the last one (no_sync before it). Returns the mean loss and tokens."""
    tp = r.params.train
    lr = lr_at(step, tp)
    for group in r.opt.param_groups:
        group["lr"] = lr
    groups = r.plan[step][r.acc.process_index :: r.acc.num_processes]
    r.opt.zero_grad(set_to_none=True)
    step_loss, tokens = 0.0, 0
    for j, idx in enumerate(groups):
        sync = j == len(groups) - 1
        with contextlib.nullcontext() if sync else r.acc.no_sync(r.net):
            loss, n = r.method.step(r, [r.examples[i] for i in idx])
            if not math.isfinite(loss.item()):
                raise not_finite(tp, r.round_id, step, "loss", loss.item())
            r.acc.backward(loss / len(groups))
        step_loss += (loss.item() - r.extra.get("mtp_loss", 0.0)) / len(groups)  # the next-token loss
        tokens += n
    norm = float(r.acc.clip_grad_norm_(r.trainable, tp.grad_clip))
    if not math.isfinite(norm):
        raise not_finite(tp, r.round_id, step, "gradient norm", norm)
    if r.heads is not None:
        r.acc.clip_grad_norm_(list(r.heads.parameters()), tp.grad_clip)
    r.opt.step()
    if r.live is not None:
        r.live.log_metric("train/loss", step_loss)
        r.live.log_metric("train/lr", lr)
        for k, v in r.extra.items():
            r.live.log_metric(f"train/{k}", v)
    return step_loss, tokens


def run(
    params: Params,
    r: Round,
    base: Base,
    ckpt_dir: Path,
    scored: Path | None = None,
    pairs: Path | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train round `r` into r.model, from score's files of the round (or `scored`, `pairs`).
    `ckpt_dir` holds checkpoints and the live logs while training (outside the DVC outputs, which
    DVC clears before a run); `stop_after`: stop as if killed after that many steps. The round's
    own train keys (rounds.<round>.train) go over the section's."""
    params = params.for_round(r.id)
    try:
        return train_loop(setup(params, Inputs.of(r, scored, pairs), base, ckpt_dir), stop_after)
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(params.train, r.id) from None


def train_loop(r: Run, stop_after: int | None) -> dict:
    tp = r.params.train
    n_tokens, step_loss, eval_loss, t0 = 0, None, None, time.perf_counter()
    bar = tqdm(range(r.start, tp.steps), desc=f"train@{r.round_id}", unit="step", disable=not r.acc.is_main_process)
    for step in bar:
        step_loss, tokens = optimizer_step(r, step)
        n_tokens += tokens
        done = step + 1
        at_checkpoint = r.checkpoint_every and done % r.checkpoint_every == 0 and done < tp.steps
        if r.held_out and (at_checkpoint or done == tp.steps):
            eval_loss = split_loss(r.net, r.tok, r.held_out, tp.max_length, tp.batch_size)
            if r.live is not None:
                r.live.log_metric("eval/loss", eval_loss)
        if r.live is not None:
            r.live.next_step()
        if at_checkpoint and r.acc.is_main_process:
            save_checkpoint(r.ckpt_dir, done, r.tokens_before + n_tokens, r.checkpointed, r.opt, r.key)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after step {done} (stop_after)")
    seconds = time.perf_counter() - t0
    alone = train_heads_alone(r) if r.heads is not None and tp.mtp_head_steps else {}
    stats = finish(r, r.tokens_before + n_tokens, step_loss, eval_loss, alone)
    if not stats:
        return {}
    return {
        **stats,
        "resumed_from": r.start,
        "tokens_per_s": n_tokens * r.acc.num_processes / seconds if seconds else 0.0,
    }


def train_stats(r: Run, tokens: int, final_loss: float | None, eval_loss: float | None) -> dict:
    """What ROUND.json records of the training: the examples by kind, steps, tokens, losses."""
    ex, tp = r.examples, r.params.train
    return {
        "method": tp.method,
        "examples": len(ex),
        "onpolicy": sum(e["kind"] == "onpolicy" for e in ex),
        "anchor": sum(e["kind"] == "anchor" for e in ex),
        "pairs": sum(e["kind"] == "pair" for e in ex),
        "feedback_pairs": sum(e["kind"] == "feedback_pair" for e in ex),
        "truncated_away": r.truncated_away,
        "steps": tp.steps,
        "processes": r.acc.num_processes,
        "tokens": tokens * r.acc.num_processes,
        "final_loss": final_loss,
        "eval_loss": eval_loss,
        **token_weights(r),
    }


def token_weights(r: Run) -> dict:
    """rho1_soft and critic: the last step's token weights (their mean, p25, p75, p95; DVCLive has
    every step's); critic: also the value head's fit, or why training fell back to uniform."""
    tp = r.params.train
    if tp.token_weighting not in ("rho1_soft", "critic"):
        return {}
    out = {"kind": tp.token_weighting, **{k: v for k, v in r.extra.items() if k.startswith("weight_")}}
    if r.critic is not None:
        out["critic"] = r.critic
    return {"token_weights": out}


def save_heads(r: Run, state: dict, adapter_dir: Path) -> dict:
    """The multi-token heads beside the adapter (so they travel with it into a release), and what
    ROUND.json says of them: their number, loss weights and top-1 accuracy per head on the
    eval-split conversations (the next-token head's beside them)."""
    from safetensors.torch import save_file

    from ..lm import mtp

    tp = r.params.train
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(adapter_dir / mtp.HEADS_FILE))
    accuracy = mtp.head_accuracy(r.model, r.heads, r.tok, r.held_out, tp.max_length, tp.batch_size)
    return {
        "heads": tp.mtp_heads - 1,
        "file": f"adapter/{mtp.HEADS_FILE}",
        "sha256": sha256_file(adapter_dir / mtp.HEADS_FILE),
        "weight": tp.mtp_weight,
        "decay": tp.mtp_decay,
        "joint": tp.mtp_joint,
        "accuracy": accuracy,
    }


def judged_by(scored: Path) -> dict:
    """The learned judge that scored the round's samples ({} when the rules alone did)."""
    with Path(scored).open(encoding="utf-8") as f:
        first = f.readline()
    judge = json.loads(first).get("judge") if first.strip() else None
    return {"judge": judge} if judge else {}


def finish(r: Run, tokens: int, final_loss: float | None, eval_loss: float | None, alone: dict) -> dict:
    """Gather the adapter, write it with its curves and ROUND.json (`alone`: what the heads' own
    steps report); drop the checkpoint."""
    r.acc.wait_for_everyone()
    # Gathered from every process under FSDP / DeepSpeed; named as the PeftModel names them. Only
    # the trained adapter is written: the reference adapter (train.reference: start) is not.
    state = {k.removeprefix("model."): v for k, v in r.acc.get_state_dict(r.net).items()}
    heads = {k.removeprefix("heads."): state.pop(k) for k in [k for k in state if k.startswith("heads.")]}
    if not r.acc.is_main_process:
        return {}
    r.live.end()
    stats = train_stats(r, tokens, final_loss, eval_loss)
    out = r.inputs.round
    with replacing(out.model) as tmp:
        tmp.mkdir(parents=True)
        shutil.copytree(r.ckpt_dir / "live", tmp / "live")
        r.model.save_pretrained(
            tmp / "adapter", state_dict=state, safe_serialization=True, selected_adapters=["default"]
        )
        stable_adapter_config(tmp / "adapter" / "adapter_config.json")
        if heads:
            stats["mtp"] = {**save_heads(r, heads, tmp / "adapter"), **alone}
        write_json(
            tmp / "ROUND.json",
            {
                "id": out.id,
                "prev": out.prev.info["id"],
                "adapter": "adapter",
                "adapter_hash": sha256_file(tmp / "adapter" / "adapter_model.safetensors"),
                "base_hash": r.base.hash,
                "init": r.params.train.init,
                "reference": r.reference,
                "train": stats,
                **judged_by(r.inputs.scored),
            },
        )
    shutil.rmtree(r.ckpt_dir, ignore_errors=True)
    return stats
