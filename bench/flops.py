"""What the hardware could do and what a model's work costs, so a benchmark can print a side's
share of the physical limit: the fp32 matmul peak of this device, measured in the same run, and a
base model's size and shape from its files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


def matmul_peak_gflops() -> float:
    """This device's fp32 matmul rate: the best of a few large torch.mm (GFLOP/s)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        torch.mm(a, b)  # warm-up: thread pool, first touch
        reps = max(2, int(2e10 // (2 * n**3)))
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if dev == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def n_params(base_dir: Path) -> int:
    """Parameters of the base, counted from its safetensors headers (embeddings included: a tied
    output layer computes with them)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def attention_shape(base_dir: Path) -> tuple[int, int]:
    """(layers, attention width = heads x head size) from the base's config."""
    cfg = json.loads((Path(base_dir) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["num_hidden_layers"], cfg["num_attention_heads"] * head_dim


def attention_flops(base_dir: Path, lengths: list[int]) -> float:
    """Forward FLOPs of causal attention over sequences of these lengths (scores and weighted
    values: 2 x layers x width x len^2 per sequence)."""
    layers, width = attention_shape(base_dir)
    return 2 * layers * width * sum(n * n for n in lengths)


def forward_flops(base_dir: Path, lengths: list[int]) -> float:
    """Forward FLOPs of sequences of these lengths: 2 x N per token, plus causal attention."""
    return 2 * n_params(base_dir) * sum(lengths) + attention_flops(base_dir, lengths)
