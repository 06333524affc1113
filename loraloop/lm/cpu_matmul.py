"""The linear layers of a CPU model, run the way generation is fastest: the output layer in blocks
of vocabulary rows, and a decode step's few rows on oneDNN over weights packed once."""

from __future__ import annotations

import contextlib

import torch

# Vocabulary rows per matmul of the output layer on a CPU. One [rows x hidden] by [vocab x hidden]
# product for the whole vocabulary ran at about half this CPU's peak; blocks of 2,048 rows took
# 33 instead of 41 ms at 64 rows and 17 instead of 23 ms at 16 (SmolLM2, 49,152 x 576).
OUTPUT_BLOCK_ROWS = 2048

# A decode step multiplies a few rows by every weight matrix, and at a few rows torch's CPU matmul
# (MKL) streams the weights at half the memory's speed. oneDNN on the same weights packed once
# into its blocked layout was 1.2-1.75x faster at 1-32 rows, about even at 64 and slower from 256
# (SmolLM2's layers streamed from memory, this 2-core CPU). So inputs of at most this many rows
# (decode steps) go to oneDNN, larger ones (prefill) to torch's matmul.
# At 1-3 rows MKL's matrix-vector path is faster again (on 2026-12-07's CPU oneDNN took 1.25x its
# time, and a batch of 1 decoded 1.27x faster on it), but it is not taken: oneDNN gives a row the
# same bits whatever the number of rows beside it, MKL does not (1 row vs 2..100: other last
# bits), and that is what keeps a sample the same with or without other prompts in its batch
# (tests/test_generate.py: sampled, batch 3 against each prompt alone).
PACKED_MAX_ROWS = 64


def _can_pack(layers: list[torch.nn.Linear]) -> bool:
    """oneDNN's packed linear is in this torch build, and a packed copy of these weights fits in
    half of the memory that is free now (the copy lives while generating)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    import psutil

    copy = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    return 2 * copy <= psutil.virtual_memory().available


def _linear_forward(layer: torch.nn.Linear, block: int, pack: bool):
    """A forward for a plain nn.Linear computing `block` output features at a time; with `pack`,
    inputs of at most PACKED_MAX_ROWS rows run on oneDNN over each block's weight packed now."""
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    spans = [slice(i, i + block) for i in range(0, layer.out_features, block)]
    biases = [None if b is None else b[s] for s in spans]
    packed = (
        [torch.ops.mkldnn._reorder_linear_weight(w[s].contiguous(), PACKED_MAX_ROWS) for s in spans] if pack else None
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        if packed is not None and x.numel() <= PACKED_MAX_ROWS * x.shape[-1]:
            parts = [torch.ops.mkldnn._linear_pointwise(x, p, bias, "none", [], "") for p, bias in zip(packed, biases)]
        else:
            parts = [torch.nn.functional.linear(x, w[s], bias) for s, bias in zip(spans, biases)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    return forward


@contextlib.contextmanager
def cpu_linears(model, rows: int = OUTPUT_BLOCK_ROWS, pack: bool = True):
    """While inside, a CPU model's plain fp32 nn.Linear layers run the way generation is fastest:

    - the output layer computes its logits `rows` vocabulary entries at a time: each logit is the
      same dot product as in one matmul, so the logits are bit-identical (tests/test_generate.py);
    - with `pack` (where this torch has oneDNN and memory holds a second copy of the weights),
      inputs of at most PACKED_MAX_ROWS rows (decode steps) run on oneDNN over weights packed once
      on entry: the same products summed in another order, so the last bits of fp32 differ (greedy
      texts: the same as `generate`'s in the tests and the bench).

    A GPU model keeps its layers, and so does a layer whose forward something else (an accelerate
    hook, an outer cpu_linears) has already replaced; each layer is itself again on exit."""
    head = model.get_output_embeddings()
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and "forward" not in vars(m)
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
    ]
    pack = pack and bool(layers) and _can_pack(layers)
    chosen = [m for m in layers if pack or (m is head and m.out_features > rows)]
    for m in chosen:
        # The instance's forward, so nn.Module.__call__ and hooks still apply.
        m.forward = _linear_forward(m, rows if m is head else m.out_features, pack)
    try:
        yield
    finally:
        for m in chosen:
            del m.forward
