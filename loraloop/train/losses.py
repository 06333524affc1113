"""The losses a training step takes over per-token losses: SFT's weighted mean (with Rho-1's
choice of tokens, its soft token weights, or the critic's) and DPO's preference loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weighted_loss(
    tok_loss: torch.Tensor, tmask: torch.Tensor, weight: torch.Tensor, token_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean token loss per example over its counted tokens (each times its token weight, whose
    mean over them is 1), then the weight-averaged mean."""
    m = tmask.float()
    w = m if token_weight is None else m * token_weight
    per_example = (tok_loss * w).sum(1) / m.sum(1).clamp(min=1)
    return (per_example * weight).sum() / weight.sum().clamp(min=1e-8)


def soft_token_weights(
    tok_loss: torch.Tensor, ref_loss: torch.Tensor, tmask: torch.Tensor, temperature: float, mix: float
) -> torch.Tensor:
    """Rho-1's soft weights: a softmax of each token's excess loss (current model minus reference)
    over its sequence's counted tokens at `temperature`, scaled so they average 1 over them, mixed
    with uniform weights: (1 - mix) + mix * softmax. Their mean over a sequence's counted tokens is
    1 whatever mix is, so the loss scale does not move with it; mix 0 is no weighting."""
    excess = (tok_loss.detach() - ref_loss).masked_fill(~tmask, float("-inf")) / temperature
    counted = tmask.sum(1, keepdim=True)
    soft = torch.softmax(excess, dim=1).nan_to_num(0.0) * counted  # a row with no counted token: 0
    return ((1.0 - mix) + mix * soft) * tmask


def critic_token_weights(
    values: torch.Tensor, tmask: torch.Tensor, temperature: float, mix: float, clip: float
) -> torch.Tensor:
    """The critic's weights: each counted token's value change (the value head's estimate after
    the token minus before it; values [B, T], tmask [B, T-1] as the losses lay them out),
    standardized within its sequence so the head's scale does not matter, a softmax at
    `temperature` over the sequence's counted tokens scaled to mean 1, mixed with uniform weights
    by `mix`, and capped at `clip` with the mean kept at 1 (capped_mean_one)."""
    delta = (values[:, 1:] - values[:, :-1]).float()
    m = tmask.float()
    counted = m.sum(1, keepdim=True)
    mean = (delta * m).sum(1, keepdim=True) / counted.clamp(min=1)
    std = (((delta - mean) * m) ** 2).sum(1, keepdim=True).div(counted.clamp(min=1)).sqrt()
    z = ((delta - mean) / std.clamp(min=1e-6)).masked_fill(~tmask, float("-inf")) / temperature
    soft = torch.softmax(z, dim=1).nan_to_num(0.0) * counted
    return capped_mean_one(((1.0 - mix) + mix * soft) * m, tmask, clip)


def capped_mean_one(w: torch.Tensor, tmask: torch.Tensor, clip: float) -> torch.Tensor:
    """Weights of mean 1 over each row's counted tokens, none above `clip` (> 1): the ones over
    it are set to it and the others scaled up to keep the mean, until none is over (each pass
    caps at least one more token, so it ends)."""
    n = tmask.sum(1, keepdim=True).float()
    capped = torch.zeros_like(tmask)
    for _ in range(w.shape[1]):
        now = ((w >= clip) | capped) & tmask
        if torch.equal(now, capped) and not (w > clip).any():
            break
        capped = now
        free = (tmask & ~capped).float()
        scale = (n - clip * capped.sum(1, keepdim=True)) / (w * free).sum(1, keepdim=True).clamp(min=1e-12)
        w = torch.where(capped, torch.full_like(w, clip), w * scale) * tmask
    return w


def weight_stats(token_weight: torch.Tensor, tmask: torch.Tensor) -> dict[str, float]:
    """Mean and quartiles (p25, p75, p95) of the counted tokens' weights, as a step logs them."""
    w = token_weight[tmask].float()
    if not w.numel():
        return {}
    q = torch.quantile(w, torch.tensor([0.25, 0.75, 0.95], dtype=w.dtype, device=w.device)).tolist()
    return {"weight_mean": float(w.mean()), "weight_p25": q[0], "weight_p75": q[1], "weight_p95": q[2]}


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
