"""Multi-token prediction heads (train.mtp_heads): their losses aligned per shift, a round
trained with them (saved beside the adapter, accuracy per head in ROUND.json; weight 0 leaves the
adapter bit for bit), and self-speculative greedy decoding that writes what `generate` writes."""

from __future__ import annotations

import pytest
import torch
from conftest import run_round, small_params
from test_generate import QUESTIONS, SYSTEM, greedy_reference, setup

from loraloop.data.prompts import with_system
from loraloop.files import read_json
from loraloop.lm import mtp, speculative
from loraloop.lm.chat import prompt_ids
from loraloop.lm.loss import cross_entropy


def random_heads(hidden: int, n: int, scale: float, seed: int = 0) -> mtp.MTPHeads:
    heads = mtp.MTPHeads(hidden, n)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return heads


@pytest.mark.parametrize(("n_heads", "scale"), [(1, 0.0), (3, 0.05), (4, 1.0)])
def test_speculative_greedy_writes_what_generate_writes(tiny_base, n_heads, scale):
    """Heads that draft poorly or at random: the same tokens as plain greedy decoding."""
    tok, model, prompts = setup(tiny_base)
    heads = random_heads(model.config.hidden_size, n_heads, scale)
    made, stats = speculative.generate_speculative(model, heads, prompts, 16, {tok.eos_token_id})
    for p, got in zip(prompts, made):
        assert got == greedy_reference(model, tok, p, 16).tolist()
    assert stats.tokens == sum(len(m) for m in made)
    assert stats.forwards < stats.tokens  # the first token of each prompt comes with its prefill
    assert stats.tokens_per_forward < 1.5  # heads that know nothing: nearly one token per forward


def test_heads_trained_on_the_models_own_replies_draft_them_and_change_nothing(tiny_base):
    """Heads fit (the model frozen) to the model's own greedy replies draft most of those replies
    back: more than 1.5 tokens per forward, the first head accepted most, and still the same text."""
    from loraloop.lm.loss import causal_lm

    tok, model, prompts = setup(tiny_base)
    n = 3
    plain, _ = speculative.generate_speculative(model, mtp.MTPHeads(model.config.hidden_size, n), prompts, 16, set())
    lm = causal_lm(model)
    seqs = [p + m for p, m in zip(prompts, plain)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)], mask[i, len(p) : len(s)] = torch.tensor(s), True
    with torch.no_grad():
        hidden = lm.get_decoder()(input_ids=ids).last_hidden_state
    heads = mtp.MTPHeads(model.config.hidden_size, n)
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        losses = mtp.head_token_losses(heads, lm.get_output_embeddings(), hidden, ids, mask)
        sum(x.sum() / mask.sum() for x in losses).backward()
        opt.step()
    made, stats = speculative.generate_speculative(model, heads, prompts, 16, set())
    assert made == plain
    acc = stats.acceptance()
    assert stats.tokens_per_forward > 1.5 and acc[0] > 0.5 and acc[0] >= acc[-1], (stats, acc)


def test_head_losses_are_aligned_per_shift():
    torch.manual_seed(0)
    hidden, vocab, n = 8, 11, 3
    heads = random_heads(hidden, n, 0.3)
    out_layer = torch.nn.Linear(hidden, vocab, bias=False)
    h = torch.randn(2, 7, hidden)
    ids = torch.randint(0, vocab, (2, 7))
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 3:7], mask[1, 2:5] = True, True
    got = mtp.head_token_losses(heads, out_layer, h, ids, mask)
    for k in range(1, n + 1):
        assert got[k - 1].shape == (2, 7 - 1 - k)
        for b in range(2):
            for t in range(7 - 1 - k):
                if mask[b, t + 1 + k]:
                    want = cross_entropy(out_layer(heads(h[b, t : t + 1], k)), ids[b, t + 1 + k : t + 2 + k])
                    assert got[k - 1][b, t].item() == pytest.approx(want.item(), rel=1e-5)
                else:
                    assert got[k - 1][b, t].item() == 0.0


def test_heads_round_trip_through_safetensors(tmp_path):
    heads = random_heads(16, 3, 0.1)
    mtp.save(heads, tmp_path / mtp.HEADS_FILE)
    back = mtp.load(tmp_path / mtp.HEADS_FILE)
    x = torch.randn(4, 16)
    assert len(back) == 3 and all(torch.equal(heads(x, k), back(x, k)) for k in (1, 2, 3))


def test_a_round_trains_heads_beside_its_adapter(project):
    """Heads on the adapter's detached states leave the adapter bit for bit; joint heads move it
    (weight 0: they do not); the heads travel in the adapter's directory with their accuracy per
    head in ROUND.json and their losses in DVCLive; speculative decoding with the round's own
    adapter and heads writes what plain greedy decoding does."""
    from loraloop.lm.model import load_model, load_tokenizer
    from loraloop.lm.vllm_lora import adapter_config, problems

    adapter = "adapter/adapter_model.safetensors"
    plain = run_round(small_params(init="fresh"), project, "tutor-r1", out_name="mtp_plain")
    heads = run_round(small_params(init="fresh", mtp_heads=3), project, "tutor-r1", out_name="mtp_heads")
    assert (heads / adapter).read_bytes() == (plain / adapter).read_bytes()
    info = read_json(heads / "ROUND.json")["train"]["mtp"]
    assert info["heads"] == 2 and info["file"] == "adapter/mtp_heads.safetensors" and not info["joint"]
    assert set(info["accuracy"]) == {"t+1", "t+2", "t+3", "n"} and info["accuracy"]["n"] > 0
    assert len(mtp.load(heads / info["file"])) == 2
    assert (heads / "live/plots/metrics/train/mtp_loss_3.tsv").is_file()
    assert problems(adapter_config(heads / "adapter")) == []  # what vLLM serves is unchanged
    assert "mtp" not in read_json(plain / "ROUND.json")["train"]

    joint = run_round(small_params(init="fresh", mtp_heads=3, mtp_joint=True), project, "tutor-r1", out_name="mtp_j")
    assert (joint / adapter).read_bytes() != (plain / adapter).read_bytes()
    zero = small_params(init="fresh", mtp_heads=3, mtp_joint=True, mtp_weight=0.0)
    assert (run_round(zero, project, "tutor-r1", out_name="mtp_j0") / adapter).read_bytes() == (
        plain / adapter
    ).read_bytes()

    tok = load_tokenizer(project / "models/base")
    model = load_model(project / "models/base", joint / "adapter")
    prompts = [prompt_ids(tok, with_system(SYSTEM, [{"role": "user", "content": q}])) for q in QUESTIONS[:3]]
    made, _ = speculative.generate_speculative(
        model, mtp.load(joint / info["file"]), prompts[:3], 8, {tok.eos_token_id}
    )
    for p, got in zip(prompts[:3], made):
        assert got == greedy_reference(model, tok, p, 8).tolist()


def test_a_head_whose_loss_is_not_finite_stops_training_and_is_named(project, monkeypatch):
    from loraloop.train.errors import TrainingStopped

    real = mtp.head_token_losses

    def broken(*args):
        losses = real(*args)
        return [losses[0], losses[1] * float("nan")]

    monkeypatch.setattr(mtp, "head_token_losses", broken)
    with pytest.raises(TrainingStopped, match="multi-token head 3's loss"):
        run_round(small_params(init="fresh", mtp_heads=3), project, "tutor-r1", out_name="mtp_nan")


def test_heads_are_sft_only():
    from loraloop.params import TrainParams

    with pytest.raises(ValueError, match="mtp_heads"):
        TrainParams(method="dpo", mtp_heads=2)
