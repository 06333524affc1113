"""Loading the base model, a round's adapter on top of it, and the tokenizer. Safetensors only;
remote code is never trusted."""

from __future__ import annotations

from pathlib import Path

import torch

from .io import read_json


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(base_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=compute_dtype(), use_safetensors=True, trust_remote_code=False
    )
    return model.to(device())


def round_info(round_dir: Path) -> dict:
    path = Path(round_dir) / "ROUND.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage that produces round {Path(round_dir).name} first")
    return read_json(path)


def load_round(base_dir: Path, round_dir: Path, trainable: bool = False):
    """The base with the round's adapter applied (or the bare base for the base round). For
    inference in fp32 the adapter is merged into the weights: a decode step then runs no LoRA
    matmuls (sample and eval about 12% faster on the CPU, same greedy texts: bench/sample.py
    --merge). In bf16 the small LoRA update would lose bits to the weights' rounding, so there
    it stays a separate term."""
    model = load_base(base_dir)
    info = round_info(round_dir)
    if info["adapter"] is None:
        return model
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, Path(round_dir) / info["adapter"], is_trainable=trainable)
    if not trainable and next(model.parameters()).dtype == torch.float32:
        return model.merge_and_unload()
    return model
