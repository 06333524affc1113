"""Token weights (train.token_weighting): Rho-1's soft weights against a hand computation on the
tiny model's own losses, their mean of 1 whatever the mix, mix 0 as no weighting bit for bit,
and a round trained with them (DVCLive and ROUND.json carry the weights' statistics)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_round, small_params
from safetensors.torch import load_file

from loraloop.files import read_json
from loraloop.lm.loss import CountedTokenLoss, collate, token_losses, tokenize
from loraloop.lm.model import load_base, load_tokenizer
from loraloop.params import TrainParams
from loraloop.train import losses


@pytest.fixture(scope="module")
def tiny_losses(tiny_base):
    """The tiny model's per-token losses on two conversations, and a 'reference' of other losses."""
    tok, model = load_tokenizer(tiny_base / "base"), load_base(tiny_base / "base")
    convs = [
        {
            "messages": [
                {"role": "user", "content": "What is 3 x 4?"},
                {"role": "assistant", "content": "What is 3 x 2?"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! Shall we count to ten together?"},
            ]
        },
    ]
    rows, _ = tokenize(tok, [{**c, "weight": 1.0, "kind": "anchor"} for c in convs], 64)
    with torch.no_grad():
        tok_loss, tmask = token_losses(CountedTokenLoss(model), collate(rows, tok.pad_token_id, torch.device("cpu")))
    ref = tok_loss * 0.5 + torch.linspace(0, 1, tok_loss.shape[1])  # any fixed values will do
    return tok_loss, ref, tmask


def test_soft_weights_equal_a_hand_computation(tiny_losses):
    tok_loss, ref, tmask = tiny_losses
    temperature, mix = 0.7, 0.3
    got = losses.soft_token_weights(tok_loss, ref, tmask, temperature, mix)
    for i in range(tok_loss.shape[0]):
        counted = [j for j in range(tok_loss.shape[1]) if tmask[i, j]]
        z = [math.exp((tok_loss[i, j].item() - ref[i, j].item()) / temperature) for j in counted]
        for j in range(tok_loss.shape[1]):
            want = (1 - mix) + mix * len(counted) * z[counted.index(j)] / sum(z) if j in counted else 0.0
            assert got[i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mix", [0.0, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_soft_weights_average_one_over_each_sequences_counted_tokens(tiny_losses, mix, temperature):
    tok_loss, ref, tmask = tiny_losses
    w = losses.soft_token_weights(tok_loss, ref, tmask, temperature, mix)
    for i in range(w.shape[0]):
        assert w[i][tmask[i]].mean().item() == pytest.approx(1.0, rel=1e-5)
        assert (w[i][~tmask[i]] == 0).all()
    stats = losses.weight_stats(w, tmask)
    assert stats["weight_mean"] == pytest.approx(1.0, rel=1e-5)
    assert stats["weight_p25"] <= stats["weight_p75"] <= stats["weight_p95"]


def test_mix_zero_is_no_weighting_bit_for_bit(tiny_losses):
    tok_loss, ref, tmask = tiny_losses
    weight = torch.tensor([1.0, 0.5])
    w = losses.soft_token_weights(tok_loss, ref, tmask, 0.7, 0.0)
    assert torch.equal(losses.weighted_loss(tok_loss, tmask, weight, w), losses.weighted_loss(tok_loss, tmask, weight))
    # the softest weighting still moves the loss off the plain mean
    w1 = losses.soft_token_weights(tok_loss, ref, tmask, 0.7, 1.0)
    assert not torch.equal(
        losses.weighted_loss(tok_loss, tmask, weight, w1), losses.weighted_loss(tok_loss, tmask, weight)
    )


def test_soft_weighting_is_sft_only_and_bounded():
    with pytest.raises(ValueError, match="token_weighting: rho1_soft weighs tokens of the SFT loss"):
        TrainParams(method="dpo", token_weighting="rho1_soft")
    for bad in ({"rho1_mix": 1.5}, {"rho1_mix": -0.1}, {"rho1_temperature": 0}):
        with pytest.raises(ValueError):
            TrainParams(token_weighting="rho1_soft", **bad)


def test_a_round_trains_with_soft_weights_and_mix_zero_trains_the_plain_adapter(project):
    plain = run_round(small_params(init="fresh"), project, "tutor-r1", out_name="tw_plain")
    zero = run_round(
        small_params(init="fresh", token_weighting="rho1_soft", rho1_mix=0.0), project, "tutor-r1", out_name="tw_zero"
    )
    soft = run_round(
        small_params(init="fresh", token_weighting="rho1_soft", rho1_mix=1.0, rho1_temperature=0.5),
        project,
        "tutor-r1",
        out_name="tw_soft",
    )
    adapter = "adapter/adapter_model.safetensors"
    assert (zero / adapter).read_bytes() == (plain / adapter).read_bytes()
    a, b = load_file(soft / adapter), load_file(plain / adapter)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    stats = read_json(soft / "ROUND.json")["train"]["token_weights"]
    assert stats["weight_mean"] == pytest.approx(1.0, rel=1e-4) and stats["weight_p95"] > stats["weight_p25"]
    assert read_json(soft / "ROUND.json")["reference"]["round"] == "base"
    p95 = (soft / "live/plots/metrics/train/weight_p95.tsv").read_text().splitlines()
    assert len(p95) == 1 + small_params().train.steps
    assert "token_weights" not in read_json(plain / "ROUND.json")["train"]
