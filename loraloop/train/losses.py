"""The losses a training step takes over per-token losses: SFT's weighted mean (with Rho-1's
choice of tokens) and DPO's preference loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weighted_loss(tok_loss: torch.Tensor, tmask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean token loss per example over its counted tokens, then the weight-averaged mean."""
    m = tmask.float()
    per_example = (tok_loss * m).sum(1) / m.sum(1).clamp(min=1)
    return (per_example * weight).sum() / weight.sum().clamp(min=1e-8)


def rho1_mask(tok_loss: torch.Tensor, ref_loss: torch.Tensor, tmask: torch.Tensor, keep: float) -> torch.Tensor:
    """Rho-1: of the batch's assistant tokens, the `keep` fraction with the highest excess loss
    (current model minus reference), i.e. the tokens still worth learning."""
    excess = (tok_loss.detach() - ref_loss).masked_fill(~tmask, float("-inf")).flatten()
    k = max(1, math.ceil(keep * int(tmask.sum())))
    chosen = torch.zeros_like(excess, dtype=torch.bool)
    chosen[excess.topk(k).indices] = True
    return chosen.view_as(tmask) & tmask


def sequence_logps(tok_loss: torch.Tensor, tmask: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row's counted tokens. Each row is summed over its own length only,
    so a row's value does not depend on how wide its batch was padded."""
    lengths = attn.sum(1).tolist()
    return torch.stack([-(tok_loss[i, : n - 1] * tmask[i, : n - 1]).sum() for i, n in enumerate(lengths)])


def dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """The DPO loss over a batch laid out [chosen..., rejected...], and the share of pairs where
    the policy already prefers the chosen reply more than the reference does."""
    n = policy_logps.shape[0] // 2
    margin = (policy_logps[:n] - ref_logps[:n]) - (policy_logps[n:] - ref_logps[n:])
    return -F.logsigmoid(beta * margin).mean(), float((margin > 0).float().mean())
