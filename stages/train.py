"""train@rN: LoRA SFT on the round's kept on-policy samples (weighted by score) mixed with the
train split, loss on assistant tokens only. Reads top to bottom: data, model, loop, save."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .chat import training_ids, with_system
from .io import read_json, read_jsonl, sha256_file, write_json
from .model import device, load_base, load_round, load_tokenizer, round_info
from .params import Params, TrainParams
from .prompts import system_prompt_for
from .version import load_split


def build_mix(params: Params, scored_file: Path, version_dir: Path, rng: random.Random) -> list[dict]:
    """The kept on-policy samples and enough train-split conversations for `mix_ratio`."""
    onpolicy = [
        {"messages": r["messages"] + [{"role": "assistant", "content": r["response"]}], "weight": r["weight"], "kind": "onpolicy"}
        for r in read_jsonl(scored_file) if r["keep"] and r["response"].strip()
    ]
    rows = load_split(version_dir, "train")
    mix = params.train.mix_ratio
    n_anchor = min(len(rows), round(len(onpolicy) * (1 - mix) / mix)) if onpolicy else len(rows)
    anchors = [
        {"messages": with_system(system_prompt_for(params.system_prompts, r["character_id"]), r["messages"]),
         "weight": r["weight"], "kind": "anchor"}
        for r in rng.sample(rows, n_anchor)
    ]
    return onpolicy + anchors


def tokenize(tok, examples: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Tokenized examples, and how many were dropped because max_length cut off every
    assistant token (counted in ROUND.json, so a too-small max_length shows)."""
    out, dropped = [], 0
    for ex in examples:
        enc = training_ids(tok, ex["messages"], max_length)
        if enc is None:
            dropped += 1
            continue
        out.append({"ids": enc[0], "mask": enc[1], "weight": ex["weight"], "kind": ex["kind"]})
    return out, dropped


def batches(examples: list[dict], batch_size: int, rng: random.Random):
    """Endless epochs; inside each, chunks of 8 batches are sorted by length so a batch pads little."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = batch_size * 8
        for c in range(0, len(order), chunk):
            part = sorted(order[c:c + chunk], key=lambda i: len(examples[i]["ids"]))
            groups = [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
            rng.shuffle(groups)
            yield from groups


def collate(examples: list[dict], idx: list[int], pad_id: int, dev) -> dict:
    width = max(len(examples[i]["ids"]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.bool)
    attn = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(examples[i]["ids"])
        ids[row, :n] = torch.tensor(examples[i]["ids"])
        mask[row, :n] = torch.tensor(examples[i]["mask"])
        attn[row, :n] = 1
    weight = torch.tensor([examples[i]["weight"] for i in idx], dtype=torch.float32)
    return {"ids": ids.to(dev), "mask": mask.to(dev), "attn": attn.to(dev), "weight": weight.to(dev)}


def weighted_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean token loss per example over its assistant tokens, then the weight-averaged mean."""
    targets = batch["ids"][:, 1:]
    tmask = batch["mask"][:, 1:].float()
    tok_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    per_example = (tok_loss * tmask).sum(1) / tmask.sum(1).clamp(min=1)
    w = batch["weight"]
    return (per_example * w).sum() / w.sum().clamp(min=1e-8)


def lr_at(step: int, tp: TrainParams) -> float:
    warmup = max(1, int(tp.steps * tp.warmup_fraction))
    if step < warmup:
        return tp.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, tp.steps - warmup)
    return tp.lr * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(params: Params, base_dir: Path, prev_dir: Path):
    """Continue the previous round's adapter (init: prev) or start a fresh LoRA on the base."""
    from peft import LoraConfig, get_peft_model

    if params.train.init == "prev" and round_info(prev_dir)["adapter"] is not None:
        return load_round(base_dir, prev_dir, trainable=True)
    lp = params.train.lora
    config = LoraConfig(
        r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=lp.target_modules,
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(load_base(base_dir), config)


def stable_adapter_config(path: Path) -> None:
    """PEFT keeps target_modules as a set, so its JSON order follows string hashing and changes from
    process to process; sort it so the same training writes the same bytes."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run(params: Params, round_id: str, base_dir: Path, version_dir: Path, prev_dir: Path,
        scored_file: Path, out_dir: Path) -> dict:
    tp = params.train
    torch.manual_seed(params.seed)
    rng = random.Random(f"{params.seed}:train:{round_id}")

    tok = load_tokenizer(base_dir)
    examples, truncated_away = tokenize(tok, build_mix(params, scored_file, version_dir, rng), tp.max_length)
    if not examples:
        raise RuntimeError(
            f"train@{round_id}: no trainable examples ({truncated_away} dropped because train.max_length="
            f"{tp.max_length} leaves no assistant token; empty samples and train split otherwise)"
        )
    model = build_model(params, base_dir, prev_dir)
    model.train()
    dev = device()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=tp.lr, weight_decay=0.0)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    from dvclive import Live

    live = Live(dir=str(out_dir / "live"), dvcyaml=None, save_dvc_exp=False, report=None)
    stream = batches(examples, tp.batch_size, rng)
    n_tokens, t0 = 0, time.perf_counter()
    bar = tqdm(range(tp.steps), desc=f"train@{round_id}", unit="step")
    for step in bar:
        lr = lr_at(step, tp)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = collate(examples, next(stream), tok.pad_token_id, dev)
        logits = model(input_ids=batch["ids"], attention_mask=batch["attn"]).logits
        loss = weighted_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, tp.grad_clip)
        opt.step()
        n_tokens += int(batch["attn"].sum())
        live.log_metric("train/loss", loss.item())
        live.log_metric("train/lr", lr)
        live.next_step()
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
    live.end()
    seconds = time.perf_counter() - t0

    model.save_pretrained(out_dir / "adapter", safe_serialization=True)
    stable_adapter_config(out_dir / "adapter" / "adapter_config.json")
    adapter_hash = sha256_file(out_dir / "adapter" / "adapter_model.safetensors")
    stats = {
        "examples": len(examples),
        "onpolicy": sum(e["kind"] == "onpolicy" for e in examples),
        "anchor": sum(e["kind"] == "anchor" for e in examples),
        "truncated_away": truncated_away,
        "steps": tp.steps,
        "tokens": n_tokens,
        "final_loss": loss.item(),
    }
    write_json(out_dir / "ROUND.json", {
        "id": round_id,
        "prev": round_info(prev_dir)["id"],
        "adapter": "adapter",
        "adapter_hash": adapter_hash,
        "base_hash": read_json(base_dir / "base.json")["hash"],
        "init": tp.init,
        "train": stats,
    })
    return {**stats, "tokens_per_s": n_tokens / seconds if seconds else 0.0}
