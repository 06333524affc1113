"""The model a round trains: the previous round's adapter continued (init: prev) or a fresh LoRA
on the base, in full precision or over a 4-bit base (QLoRA); and the adapter written so that the
same training gives the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..lm.model import compute_dtype, load_base, load_model
from ..params import LoraParams, TrainParams
from ..workspace import Round
from .errors import TrainingStopped
from .reference import REFERENCE_ADAPTER


def load_quantized_base(base_dir: Path):
    """The base in 4-bit NF4 through bitsandbytes (QLoRA). CUDA only."""
    if not torch.cuda.is_available():
        raise TrainingStopped(
            "train.quantize: 4bit (QLoRA) needs a CUDA GPU with bitsandbytes; this machine has "
            "no CUDA device. Set train.quantize: none to train in full precision here."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainingStopped("train.quantize: 4bit needs the bitsandbytes package: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_dir,
        quantization_config=config,
        device_map={"": torch.cuda.current_device()},
        dtype=compute_dtype(),
        use_safetensors=True,
        trust_remote_code=False,
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def build_model(tp: TrainParams, base_dir: Path, start: Round, reference: dict | None):
    """Continue the adapter of `start`, the previous round (init: prev), or start a fresh LoRA on
    the base; with reference: start, that adapter once more beside it, frozen, as the reference."""
    from peft import PeftModel, get_peft_model

    base = load_quantized_base(base_dir) if tp.quantize == "4bit" else None
    if tp.init == "prev" and start.adapter is not None:
        if base is None:
            model = load_model(base_dir, start.adapter, trainable=True)
        else:
            model = PeftModel.from_pretrained(base, start.adapter, is_trainable=True)
        if reference is not None and reference["kind"] == "start":
            model.load_adapter(start.adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            model.set_adapter("default")
        return model
    return get_peft_model(base if base is not None else load_base(base_dir), lora_config(tp.lora))


def lora_config(lp: LoraParams):
    """PEFT's LoraConfig of train.lora, for a causal LM, no bias terms."""
    from peft import LoraConfig

    return LoraConfig(
        r=lp.r,
        lora_alpha=lp.alpha,
        lora_dropout=lp.dropout,
        target_modules=lp.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def stable_adapter_config(path: Path) -> None:
    """PEFT keeps target_modules as a set, so its JSON order follows string hashing and changes from
    process to process; sort it so the same training writes the same bytes."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
