"""Multi-token prediction heads (train.mtp_heads: H): H-1 heads beside the model's own next-token
head, head k predicting the token k+1 places ahead of the position it reads. Each is one
residual block (h + SiLU(W h), W zero at the start, so a new head first predicts what the next-token
head does) on the final hidden state, followed by the model's own frozen output layer: Medusa's
shape. Chosen over DeepSeek-V3's MTP module (a whole transformer block per depth, fed the next
token's embedding) because a head then costs one hidden x hidden matmul (and a read of its draft
through the output layer: on a CPU about a fifth of SmolLM2-135M's forward per head, README) and
needs no key/value cache of its own, so verifying stays one forward of the adapted model; the heads
are not LoRA modules, so what vLLM serves is unchanged.

Saved beside the round's adapter as mtp_heads.safetensors (numbers only)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .loss import causal_lm, collate, cross_entropy, tokenize

HEADS_FILE = "mtp_heads.safetensors"


class ResBlock(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, hidden)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.silu(self.linear(h))


class MTPHeads(torch.nn.Module):
    """blocks[k-1] turns the hidden state at position t into one the output layer reads as token
    t+1+k (k = 1 .. len(blocks))."""

    def __init__(self, hidden: int, n: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(ResBlock(hidden) for _ in range(n))

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        return self.blocks[k - 1](hidden)

    def token_losses(self, out_layer, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """head_token_losses of these heads: what the training loss (lm/loss.py) asks of them, so
        that it needs no import of this module."""
        return head_token_losses(self, out_layer, hidden, ids, mask)


def head_token_losses(heads: MTPHeads, out_layer, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """Per head k, the loss [B, T-1-k] of predicting token t+1+k from the hidden state at t
    (hidden: [B, T, D], the decoder's output at every position), 0 where that token does not count
    (not an assistant token, or past the row). The output layer runs only where a loss is taken."""
    losses = []
    width = ids.shape[1]
    for k in range(1, len(heads) + 1):
        counted = mask[:, 1 + k :]
        picked = hidden[:, : width - 1 - k][counted]
        if not picked.shape[0]:
            losses.append(torch.zeros(counted.shape, device=hidden.device, requires_grad=hidden.requires_grad))
            continue
        own = next(heads.parameters()).dtype  # the heads may train in fp32 over a bf16 model
        logits = out_layer(heads(picked.to(own), k).to(out_layer.weight.dtype))
        loss = cross_entropy(logits.float(), ids[:, 1 + k :][counted])
        losses.append(torch.zeros(counted.shape, dtype=loss.dtype, device=loss.device).masked_scatter(counted, loss))
    return losses


@torch.no_grad()
def head_accuracy(model, heads: MTPHeads, tok, conversations: list[dict], max_length: int, batch_size: int) -> dict:
    """Top-1 accuracy on the conversations' assistant tokens (teacher forcing) of the next-token
    head ("t+1") and of each multi-token head ("t+2", ...), and how many tokens the first counted."""
    examples, _ = tokenize(tok, conversations, max_length)
    lm = causal_lm(model)
    out_layer, dev, own = lm.get_output_embeddings(), next(model.parameters()).device, next(heads.parameters()).dtype
    right, total = [0] * (len(heads) + 1), [0] * (len(heads) + 1)
    was = model.training, heads.training
    model.eval(), heads.eval()
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], tok.pad_token_id, dev)
        full = lm.get_decoder()(input_ids=batch["ids"], attention_mask=batch["attn"]).last_hidden_state
        width = batch["ids"].shape[1]
        for k in range(len(heads) + 1):
            counted = batch["mask"][:, 1 + k :]
            h = full[:, : width - 1 - k][counted]
            if k:
                h = heads(h.to(own), k).to(out_layer.weight.dtype)
            right[k] += int((out_layer(h).argmax(-1) == batch["ids"][:, 1 + k :][counted]).sum())
            total[k] += int(counted.sum())
    model.train(was[0]), heads.train(was[1])
    return {
        **{f"t+{k + 1}": round(right[k] / total[k], 6) if total[k] else None for k in range(len(right))},
        "n": total[0],
    }


def save(heads: MTPHeads, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}, str(path))


def load(path: Path, dtype=None) -> MTPHeads:
    """Heads saved by save(): their number and width read from the tensors."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    n = len({k.split(".")[1] for k in state})
    heads = MTPHeads(state["blocks.0.linear.weight"].shape[0], n)
    heads.load_state_dict(state)
    return heads.to(dtype) if dtype is not None else heads
