"""Token weights (train.token_weighting): Rho-1's soft weights against a hand computation on the
tiny model's own losses, their mean of 1 whatever the mix, mix 0 as no weighting bit for bit,
and a round trained with them (DVCLive and ROUND.json carry the weights' statistics); the
critic's value head, its weights against a hand computation, its fit and its fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_round, small_params
from safetensors.torch import load_file

from loraloop.files import read_json, write_jsonl
from loraloop.judge import critic
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


def hand_critic_weights(values: list[float], counted: list[bool], temperature, mix, clip) -> list[float]:
    """The critic's weights of one sequence, written out: value change per predicted token,
    standardized over the counted ones, softmax, mix, clip, mean 1."""
    delta = [values[j + 1] - values[j] for j in range(len(values) - 1)]
    on = [d for d, c in zip(delta, counted) if c]
    mean = sum(on) / len(on)
    std = math.sqrt(sum((d - mean) ** 2 for d in on) / len(on))
    e = [math.exp((d - mean) / std / temperature) for d in on]
    w = [(1 - mix) + mix * len(on) * x / sum(e) for x in e]
    capped: set[int] = set()
    while any(x > clip + 1e-9 for j, x in enumerate(w) if j not in capped):  # cap, rescale the rest
        capped |= {j for j, x in enumerate(w) if x >= clip}
        rest = sum(x for j, x in enumerate(w) if j not in capped)
        scale = (len(on) - clip * len(capped)) / rest
        w = [clip if j in capped else x * scale for j, x in enumerate(w)]
    it = iter(w)
    return [next(it) if c else 0.0 for c in counted]


@pytest.mark.parametrize(("temperature", "mix", "clip"), [(1.0, 0.5, 4.0), (0.5, 1.0, 1.5), (1.0, 0.0, 4.0)])
def test_critic_weights_equal_a_hand_computation(temperature, mix, clip):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 9, generator=g)
    tmask = torch.zeros(2, 8, dtype=torch.bool)
    tmask[0, 2:8], tmask[1, 3:6] = True, True
    got = losses.critic_token_weights(values, tmask, temperature, mix, clip)
    for i in range(2):
        want = hand_critic_weights(values[i].tolist(), tmask[i].tolist(), temperature, mix, clip)
        assert got[i].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert got[i][tmask[i]].mean().item() == pytest.approx(1.0, rel=1e-5)
    if mix == 0.0:
        assert torch.equal(got, tmask.float())  # no weighting
    elif clip == 1.5:
        assert got.max().item() == pytest.approx(1.5)  # the softmax alone would give one token ~3


def test_the_critic_fit_is_judged_against_a_constant():
    """A head that predicts held-out scores better than the training mean has R^2 > 0; one fit to
    noise does not, and the stage would mark it unusable."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    signal = (x[:, 0] * 0.5 + 0.5).astype(np.float32)
    cp = small_params().train.critic
    head = critic.fit(x[:300], signal[:300], cp, seed=1)
    with torch.no_grad():
        pred = head(torch.from_numpy(x[300:])).numpy()
    good = critic.fit_report(pred, signal[300:], float(signal[:300].mean()))
    assert good["r2"] > 0.5 and good["spearman"] > 0.8
    noise = rng.normal(size=400).astype(np.float32)
    head = critic.fit(x[:300], noise[:300], cp, seed=1)
    with torch.no_grad():
        pred = head(torch.from_numpy(x[300:])).numpy()
    assert critic.fit_report(pred, noise[300:], float(noise[:300].mean()))["r2"] <= 0
    assert critic.fit_report(np.full(5, 0.3), np.full(5, 0.3), 0.3)["r2"] == 0.0  # nothing to explain


def test_held_out_prompts_do_not_depend_on_the_other_samples():
    ids = [f"p{i}" for i in range(20)]
    out = critic.held_out_prompts(ids, 0.25, seed=3)
    assert len(out) == 5 and out == critic.held_out_prompts(ids + ids, 0.25, seed=3)
    assert critic.held_out_prompts(["only"], 0.25, seed=3) == set()


def test_the_critic_stage_fits_saves_and_loads_its_head(project, tiny_base, tmp_path):
    """On the tiny model's real hidden states: a score the replies' words decide is learned; the
    saved head computes what the fitted one did, with pickle nowhere."""
    from conftest import workspace

    p = small_params(token_weighting="critic")
    p.train.critic.epochs = 300
    rows = []
    for i in range(24):
        good = i % 2 == 0
        reply = "Shall we count the apples together?" if good else "No. Wrong. The answer is 12."
        rows.append(
            {
                "prompt_id": f"p{i}",
                "character_id": "tutor",
                "messages": [{"role": "user", "content": f"What is {i} x 3?"}],
                "response": reply,
                "score": 0.9 if good else 0.1,
            }
        )
    import dataclasses

    r = dataclasses.replace(workspace(p, project).round("tutor-r1"), data=tmp_path / "round")
    write_jsonl(r.scored, rows)
    got = critic.run(p, r, workspace(p, project).base, tmp_path / "critic", tmp_path / "critic.json")
    assert got["used"] and got["usable"] and got["r2"] > 0.5, got
    metrics = read_json(tmp_path / "critic.json")["critic"]
    assert metrics["held_out_samples"] == 6 and metrics["samples"] == 18
    head, meta = critic.load(tmp_path / "critic")
    assert meta["scored_hash"] and meta["base_hash"]
    x = torch.randn(3, head.mean.shape[0])
    assert set(load_file(tmp_path / "critic" / critic.WEIGHTS)) >= {"mean", "scale", "mlp.0.weight"}
    assert head(x).shape == (3,)


def test_an_unused_critic_is_a_note(project, tmp_path):
    from conftest import workspace

    p = small_params()
    r = workspace(p, project).round("tutor-r1")
    assert critic.run(p, r, workspace(p, project).base, tmp_path / "c", tmp_path / "c.json") == {"used": False}
    assert read_json(tmp_path / "c.json") == {} and sorted(x.name for x in (tmp_path / "c").iterdir()) == [critic.META]


def test_critic_weighting_trains_with_the_head_and_falls_back_to_uniform(project, tmp_path):
    """An unusable critic (too few samples) trains the plain adapter bit for bit and says so in
    ROUND.json; a usable head moves the adapter, and DVCLive and ROUND.json carry its weights."""
    import dataclasses

    from conftest import round_in

    from loraloop.train import loop as train
    from loraloop.workspace import Base

    plain = run_round(small_params(init="fresh"), project, "tutor-r1", out_name="tw_plain")
    few = small_params(init="fresh", token_weighting="critic")
    few.train.critic.min_samples = 10_000
    fallback = run_round(few, project, "tutor-r1", out_name="tw_critic_fallback")
    adapter = "adapter/adapter_model.safetensors"
    assert (fallback / adapter).read_bytes() == (plain / adapter).read_bytes()
    tw = read_json(fallback / "ROUND.json")["train"]["token_weights"]
    assert tw["kind"] == "critic" and tw["critic"]["fallback"] == "uniform" and "min_samples" in tw["critic"]["reason"]

    # a head the stage would have kept, on the tiny model's hidden size, over the same samples
    p = small_params(init="fresh", token_weighting="critic")
    width = read_json(project / "models/base/config.json")["hidden_size"]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, width)).astype(np.float32), rng.random(64).astype(np.float32)
    head = critic.fit(x, y, p.train.critic, 0)
    critic.save(tmp_path / "head", head, {"used": True, "usable": True, "r2": 0.5})
    data = project / "rounds/tutor/tw_plain"  # the samples `plain` was trained on
    r = dataclasses.replace(round_in(p, project, "tutor-r1"), data=data, critic=tmp_path / "head")
    weighted = dataclasses.replace(r, model=tmp_path / "weighted")
    train.run(p, weighted, Base(project / "models/base"), tmp_path / "ckpt")
    a, b = load_file(tmp_path / "weighted" / adapter), load_file(plain / adapter)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    tw = read_json(tmp_path / "weighted/ROUND.json")["train"]["token_weights"]
    assert tw["critic"] == {"usable": True, "r2": 0.5} and tw["weight_mean"] == pytest.approx(1.0, rel=1e-4)
    assert tw["weight_p95"] > tw["weight_p25"]
    p95 = (tmp_path / "weighted/live/plots/metrics/train/weight_p95.tsv").read_text().splitlines()
    assert len(p95) == 1 + p.train.steps


def test_critic_weighting_without_the_critic_stage_says_what_to_run(project, tmp_path):
    import dataclasses

    from conftest import round_in

    from loraloop.train import loop as train
    from loraloop.train.errors import TrainingStopped
    from loraloop.workspace import Base

    p = small_params(init="fresh", token_weighting="critic")
    r = dataclasses.replace(round_in(p, project, "tutor-r1"), model=tmp_path / "m", critic=tmp_path / "none")
    with pytest.raises(TrainingStopped, match="loraloop critic --round tutor-r1"):
        train.run(p, r, Base(project / "models/base"), tmp_path / "ckpt")
