"""Teacher-forced next-token loss of a causal LM on chat conversations: tokenized examples,
padded batches, the loss at the positions that count, and the mean loss over a fixed set of
conversations. Shared by train (what it optimizes) and eval (the eval-split loss)."""

from __future__ import annotations

import torch

from .chat import training_ids


def tokenize(tok, examples: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Tokenized examples, and how many were dropped because max_length cut off every
    assistant token (counted in ROUND.json, so a too-small max_length shows)."""
    out, dropped = [], 0
    for ex in examples:
        enc = training_ids(tok, ex["messages"], max_length, ex.get("tools"))
        if enc is None:
            dropped += 1
            continue
        out.append({"ids": enc[0], "mask": enc[1], "weight": ex["weight"], "kind": ex["kind"]})
    return out, dropped


# CPU kernels reduce in vectors of up to 16 floats with a scalar loop for the remainder, and matrix
# kernels choose their blocking by the number of rows, so a row's last bits can depend on how wide
# its batch was padded and how many rows it had. An aligned batch rounds both up to a multiple of
# ALIGN (with at least one padding column: a batch without padding takes the unmasked attention
# path): then a row's losses are the same in any batch, and values computed once (the reference's,
# before training) equal values computed in a step's batch. tests/test_reference.py checks it.
ALIGN = 32


def collate(rows: list[dict], pad_id: int, dev, aligned: bool = False) -> dict:
    """Right-padded ids, assistant mask, attention mask and weights of tokenized rows."""
    width = max(len(r["ids"]) for r in rows)
    if aligned:
        width = (width // ALIGN + 1) * ALIGN
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["ids"])
        ids[i, :n] = torch.tensor(r["ids"])
        mask[i, :n] = torch.tensor(r["mask"])
        attn[i, :n] = 1
    weight = torch.tensor([r.get("weight", 1.0) for r in rows], dtype=torch.float32)
    return {
        "ids": ids.to(dev),
        "mask": mask.to(dev),
        "attn": attn.to(dev),
        "weight": weight.to(dev),
        "aligned": aligned,
    }


class _CrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy whose backward turns the saved logits into their gradient in place:
    F.cross_entropy keeps a log-softmax copy of the logits and builds a zeroed one-hot gradient,
    two more vocabulary-wide buffers (at Qwen's 150k vocabulary, the largest tensors of a step)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse, target)
        return lse - logits.gather(1, target[:, None]).squeeze(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, target = ctx.saved_tensors
        g = grad[:, None]
        out = logits.sub_(lse[:, None]).exp_().mul_(g)  # softmax * grad, in the logits' own memory
        return out.scatter_add_(1, target[:, None], -g), None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N]: -log softmax(logits)[target] per row. The logits are overwritten by the backward pass,
    so they must be a tensor nothing else reads afterwards (fresh output-layer logits are)."""
    return _CrossEntropy.apply(logits, target)


def causal_lm(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def _head_splits(model) -> bool:
    """Whether running the decoder, then the output layer on chosen positions, gives the model's
    own logits. Models that change logits after the output layer (soft-capping, scaling) fail the
    check and keep the full forward."""
    lm = causal_lm(model)
    if not (hasattr(lm, "get_decoder") and hasattr(lm, "get_output_embeddings")) or lm.get_output_embeddings() is None:
        return False
    was_training = model.training
    model.eval()
    try:
        ids = torch.arange(1, 9, device=next(model.parameters()).device)[None]
        full = model(input_ids=ids).logits.float()
        split = lm.get_output_embeddings()(lm.get_decoder()(input_ids=ids).last_hidden_state).float()
        return full.shape == split.shape and torch.allclose(full, split, rtol=1e-2, atol=1e-2)
    finally:
        model.train(was_training)


class CountedTokenLoss(torch.nn.Module):
    """Next-token cross-entropy of a causal LM at the positions that count (assistant tokens).

    The output layer is as wide as the vocabulary (49k columns for SmolLM2, 150k for Qwen), so on
    every position of a padded batch it costs about as much as the whole decoder of a small model;
    here it runs only where a loss is taken. A module, so that DDP/FSDP wrap the whole forward."""

    def __init__(self, model, heads=None, joint: bool = False):
        """`heads`: multi-token heads (lm/mtp.py) whose losses forward(..., with_heads=True) adds;
        `joint`: their gradients reach the model too (else they learn on its detached states)."""
        super().__init__()
        self.model = model
        self.heads, self.joint = heads, joint
        self.split = _head_splits(model)
        # FSDP's transformer auto-wrap looks for the layer classes on the module it is given.
        self._no_split_modules = getattr(causal_lm(model), "_no_split_modules", None)

    def forward(
        self, ids: torch.Tensor, attn: torch.Tensor | None, mask: torch.Tensor, aligned: bool = False, with_heads=False
    ):
        """[B, T-1]: the loss of predicting token t+1 at position t, 0 where t+1 does not count.
        `aligned`: also pad the counted rows the output layer sees to a multiple of ALIGN.
        `with_heads`: (that, the multi-token heads' losses: lm/mtp.py MTPHeads.token_losses)."""
        counted = mask[:, 1:]
        if with_heads and not self.split:
            raise ValueError("train.mtp_heads: this model's output layer does not run apart from its decoder")
        if self.split:
            lm = causal_lm(self.model)
            full = lm.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
            hidden = full[:, :-1][counted]
            n = hidden.shape[0]
            if aligned:
                hidden = torch.cat([hidden, hidden.new_zeros((n // ALIGN + 1) * ALIGN - n, hidden.shape[1])])
            logits = lm.get_output_embeddings()(hidden)[:n]
        else:
            logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1][counted]
        loss = cross_entropy(logits.float(), ids[:, 1:][counted])
        main = torch.zeros(counted.shape, dtype=loss.dtype, device=loss.device).masked_scatter(counted, loss)
        if not with_heads:
            return main
        trunk = full if self.joint else full.detach()
        return main, self.heads.token_losses(lm.get_output_embeddings(), trunk, ids, mask)


def token_losses(net: CountedTokenLoss, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy [B, T-1] and the mask of tokens that count (assistant tokens)."""
    return net(batch["ids"], batch["attn"], batch["mask"], batch.get("aligned", False)), batch["mask"][:, 1:]


@torch.no_grad()
def split_loss(net: CountedTokenLoss, tok, conversations: list[dict], max_length: int, batch_size: int) -> float:
    """Mean assistant-token loss of a model on fixed conversations (teacher forcing)."""
    examples, _ = tokenize(tok, conversations, max_length)
    if not examples:
        return float("nan")
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    total, count = 0.0, 0
    examples = sorted(examples, key=lambda e: len(e["ids"]))
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], tok.pad_token_id, dev)
        loss, tmask = token_losses(net, batch)
        total += float(loss.sum())
        count += int(tmask.sum())
    net.train(was_training)
    return total / max(count, 1)
