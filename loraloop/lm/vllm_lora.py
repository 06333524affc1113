"""What vLLM's LoRA serving accepts, checked on an adapter's adapter_config.json before it is
released (package) and when `loraloop serve --engine vllm` builds vLLM's command line.

vLLM applies LoRA to the linear layers only, takes --max-lora-rank from a fixed set (an adapter's
rank may be any value up to it), and does not load DoRA, modules_to_save, LoRA on the embeddings
or the output head, or LoRA biases without a flag."""

from __future__ import annotations

import json
from pathlib import Path

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
HEAD_OR_EMBEDDING = ("lm_head", "embed_tokens", "wte", "wpe", "embed_out", "output")


def adapter_config(adapter_dir: Path) -> dict:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def adapter_rank(cfg: dict) -> int:
    return max([int(cfg.get("r") or 0), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())])


def problems(cfg: dict) -> list[str]:
    """Why vLLM would refuse this adapter; empty when it can serve it."""
    out = []
    if cfg.get("peft_type", "LORA") != "LORA":
        out.append(f"peft_type {cfg.get('peft_type')} (vLLM serves LORA adapters only)")
    if cfg.get("use_dora"):
        out.append("use_dora: true (vLLM does not serve DoRA)")
    if cfg.get("modules_to_save"):
        out.append(f"modules_to_save {cfg['modules_to_save']} (vLLM loads LoRA weights only)")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    bad = [t for t in targets if t.split(".")[-1] in HEAD_OR_EMBEDDING]
    if bad:
        out.append(f"target_modules {bad} (vLLM applies LoRA to linear layers, not the embeddings or output head)")
    if cfg.get("trainable_token_indices"):
        out.append("trainable_token_indices (new token embeddings are not served by vLLM)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        out.append("LoRA bias (vLLM needs --enable-lora-bias, which recent versions dropped)")
    rank = adapter_rank(cfg)
    if rank > MAX_LORA_RANKS[-1]:
        out.append(f"rank {rank} (vLLM's --max-lora-rank is at most {MAX_LORA_RANKS[-1]})")
    return out


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds every rank."""
    need = max(ranks, default=1)
    return next(r for r in MAX_LORA_RANKS if r >= need)
