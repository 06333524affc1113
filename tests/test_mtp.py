"""Multi-token prediction heads (train.mtp_heads): their losses aligned per shift, a round
trained with them (saved beside the adapter, accuracy per head in ROUND.json; weight 0 leaves the
adapter bit for bit), self-speculative greedy decoding that writes what `generate` writes, and
speculative sampling that draws from what the plain sampler draws from (sample.speculative)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import run_round, small_params
from test_generate import QUESTIONS, SYSTEM, greedy_reference, nan_allocations, setup

from loraloop.data.prompts import with_system
from loraloop.files import read_json
from loraloop.lm import mtp, speculative
from loraloop.lm.chat import prompt_ids
from loraloop.lm.kv_cache import ragged
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


def test_one_prompt_at_a_time_prefills_their_shared_system_prompt_once(tiny_base):
    """Batch 1 (decode_one): the system prompt every prompt starts with is prefilled once, then
    each prompt's own tokens on a copy of its cache; the tokens are still plain greedy's."""
    from loraloop.lm.loss import causal_lm
    from loraloop.lm.prefill import common_prefix

    tok, model, prompts = setup(tiny_base)
    prompts = prompts[:3]
    shared = common_prefix(prompts)
    assert shared > 0
    prefills = []

    def heard(module, args, kw):  # a prefill: more tokens than a verifying step's
        if kw["input_ids"].shape[1] > 4:
            prefills.append(kw["input_ids"].shape[1])

    hook = causal_lm(model).get_decoder().register_forward_pre_hook(heard, with_kwargs=True)
    try:
        heads = random_heads(model.config.hidden_size, 3, 0.05)
        made, _ = speculative.generate_speculative(model, heads, prompts, 8, set())
    finally:
        hook.remove()
    assert prefills == [shared] + [len(p) - shared for p in prompts]
    assert made == [greedy_reference(model, tok, p, 8).tolist() for p in prompts]


def heads_fit_to(model, prompts: list[list[int]], replies: list[list[int]], n: int) -> mtp.MTPHeads:
    """n-1 heads fit (the model frozen) to predict these replies' tokens."""
    from loraloop.lm.loss import causal_lm

    lm = causal_lm(model)
    seqs = [p + m for p, m in zip(prompts, replies)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)], mask[i, len(p) : len(s)] = torch.tensor(s), True
    with torch.no_grad():
        hidden = lm.get_decoder()(input_ids=ids).last_hidden_state
    heads = mtp.MTPHeads(model.config.hidden_size, n)
    opt = torch.optim.Adam(heads.parameters(), lr=2e-2)
    for _ in range(40):
        opt.zero_grad()
        losses = mtp.head_token_losses(heads, lm.get_output_embeddings(), hidden, ids, mask)
        sum(x.sum() / mask.sum() for x in losses).backward()
        opt.step()
    return heads


def test_heads_trained_on_the_models_own_replies_draft_them_and_change_nothing(tiny_base):
    """Heads fit (the model frozen) to the model's own greedy replies draft most of those replies
    back: more than 1.5 tokens per forward, the first head accepted most, and still the same text."""
    tok, model, prompts = setup(tiny_base)
    n = 3
    plain, _ = speculative.generate_speculative(model, mtp.MTPHeads(model.config.hidden_size, n), prompts, 16, set())
    made, stats = speculative.generate_speculative(model, heads_fit_to(model, prompts, plain, n), prompts, 16, set())
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

    # The heads' own steps after the adapter's (on replies to more prompts too): the adapter as it
    # was, the heads further on.
    alone_params = small_params(init="fresh", mtp_heads=3, mtp_head_steps=12, mtp_head_prompts=4)
    alone = run_round(alone_params, project, "tutor-r1", out_name="mtp_a")
    assert (alone / adapter).read_bytes() == (plain / adapter).read_bytes()
    assert (alone / info["file"]).read_bytes() != (heads / info["file"]).read_bytes()
    trained = read_json(alone / "ROUND.json")["train"]["mtp"]
    assert trained["head_steps"] == 12 and trained["head_data"] == "replies" and "head_steps" not in info
    assert 0 < trained["head_prompts"] <= 4  # the lineage's train split, those with room for a reply
    first, last = trained["head_loss"]
    assert last < first

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


def test_head_steps_read_the_models_own_greedy_replies(tiny_base):
    """train.mtp_head_data: replies: each example's last reply is replaced by the model's greedy
    reply to what precedes it (its earlier turns kept as context, not counted), cut to
    train.max_length; `examples` would read the examples' own tokens."""
    from types import SimpleNamespace

    from conftest import small_params

    from loraloop.lm.loss import tokenize
    from loraloop.train.heads import last_turn_start, reply_rows

    assert last_turn_start([False, True, True, False, True, True, True]) == 4
    assert last_turn_start([False, False, True]) == 2
    tok, model, _ = setup(tiny_base)
    convs = [
        with_system(SYSTEM, [{"role": "user", "content": q}, {"role": "assistant", "content": "Let us see."}])
        for q in QUESTIONS[:3]
    ]
    convs[0] = convs[0] + [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then more."}]
    examples, _ = tokenize(tok, [{"messages": c, "weight": 1.0, "kind": "anchor"} for c in convs], 256)
    params = small_params(max_length=256)
    r = SimpleNamespace(params=params, model=model, tok=tok, acc=SimpleNamespace(is_main_process=False), round_id="t")
    rows = reply_rows(r, examples)
    n = params.sample.max_new_tokens
    for ex, row in zip(examples, rows):
        start = last_turn_start(ex["mask"])
        prompt, reply = row["ids"][:start], row["ids"][start:]
        assert prompt == ex["ids"][:start] and row["mask"] == [False] * start + [True] * len(reply)
        assert reply == greedy_reference(model, tok, prompt, n).tolist() and 0 < len(reply) <= n
        assert row["weight"] == ex["weight"] and row["kind"] == ex["kind"]
    assert sum(examples[0]["mask"][: last_turn_start(examples[0]["mask"])]) > 0  # an earlier reply, not counted
    short = reply_rows(SimpleNamespace(**{**vars(r), "params": small_params(max_length=len(prompt) + 2)}), examples)
    assert len(short[-1]["ids"]) == len(prompt) + 2


def test_head_steps_also_read_replies_to_more_train_split_prompts(project):
    """train.mtp_head_prompts: N more train-split prompts of the round's lineage, cut as the sample
    stage cuts them, follow the examples with the model's greedy replies, only the replies counted;
    a prompt with no room for a reply within max_length is left out; with mtp_head_data: examples
    the setting is refused by name."""
    from types import SimpleNamespace

    from conftest import small_params
    from pydantic import ValidationError

    from loraloop.data.prompts import prompts_from_split
    from loraloop.lm.loss import tokenize
    from loraloop.train.heads import more_prompts, reply_rows

    tok, model, _ = setup(project / "models")
    params = small_params(max_length=4096, mtp_head_prompts=3)
    view = project / "lineages" / "tutor"
    rnd = SimpleNamespace(view=view, lineage="tutor")
    acc = SimpleNamespace(is_main_process=False)
    r = SimpleNamespace(params=params, model=model, tok=tok, acc=acc, round_id="t", inputs=SimpleNamespace(round=rnd))
    more = more_prompts(r)
    convs = prompts_from_split(
        view, "train", 3, f"{params.seed}:head-prompts:t", params.lineage("tutor").system_prompts
    )
    assert more == [prompt_ids(tok, c["messages"], c.get("tools")) for c in convs] and len(more) == 3
    short = SimpleNamespace(**{**vars(r), "params": small_params(max_length=256, mtp_head_prompts=3)})
    assert more_prompts(short) == [p for p in more if len(p) < 256] and len(more_prompts(short)) < 3  # no room
    conv = with_system(SYSTEM, [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "Yes."}])
    examples, _ = tokenize(tok, [{"messages": conv, "weight": 2.0, "kind": "anchor"}], 256)
    rows = reply_rows(r, examples, more)
    assert len(rows) == 4 and rows[0]["kind"] == "anchor" and rows[0]["weight"] == 2.0
    for p, row in zip(more, rows[1:]):
        reply = row["ids"][len(p) :]
        assert row["ids"][: len(p)] == p and row["mask"] == [False] * len(p) + [True] * len(reply)
        assert reply == greedy_reference(model, tok, p, params.sample.max_new_tokens).tolist() and reply
        assert (row["kind"], row["weight"]) == ("head prompt", 1.0)
    with pytest.raises(ValidationError, match="mtp_head_prompts"):
        small_params(mtp_head_prompts=3, mtp_head_data="examples")


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


def test_head_steps_pass_over_every_example_in_fixed_batches():
    import random

    from loraloop.train.heads import head_batches

    plan = head_batches(10, 4, 9, random.Random("s"))
    assert len(plan) == 9 and plan == head_batches(10, 4, 9, random.Random("s"))
    first_pass = plan[:3]
    assert sorted(i for b in first_pass for i in b) == list(range(10))
    assert {tuple(b) for b in plan} == {tuple(b) for b in first_pass}  # the same batches, reordered
    assert plan[3:6] != first_pass or plan[6:] != first_pass


def draft_and_verify(p: torch.Tensor, q: torch.Tensor, trials: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """`trials` runs of speculative sampling's rule on fixed targets p and draft distributions q:
    the tokens each emits, and how many drafts each kept."""
    gen, out, kept = torch.Generator().manual_seed(seed), [], []
    for _ in range(trials):
        drafts = [speculative.draw(row, gen) for row in q]
        a, after = speculative.verify_sampled(p, q, drafts, gen)
        out.append(drafts[:a] + [after])
        kept.append(a)
    return out, kept


def test_the_rejection_rule_emits_the_target_distribution():
    """Whatever the drafts' distribution, each emitted token is distributed as the target (a token
    the target never draws is never emitted), the first draft is kept with probability
    sum(min(p, q)), and the draft distribution itself is told apart by the same test."""
    from scipy.stats import chisquare as scipy_chisquare

    def chisquare(counts, expected):  # in float64, the expected counts summing to the observed
        counts, expected = counts.double(), expected.double()
        return scipy_chisquare(counts.numpy(), (expected / expected.sum() * counts.sum()).numpy())

    g = torch.Generator().manual_seed(0)
    vocab, n, trials = 6, 2, 20000
    p = torch.softmax(torch.randn(n + 1, vocab, generator=g) * 1.5, -1)
    p[0, 5] = 0.0
    p[0] /= p[0].sum()
    q = torch.softmax(torch.randn(n, vocab, generator=g) * 1.5, -1)
    out, kept = draft_and_verify(p, q, trials, seed=1)
    first = torch.bincount(torch.tensor([o[0] for o in out]), minlength=vocab)
    assert first[5] == 0
    assert chisquare(first[:5], p[0, :5] * trials).pvalue > 1e-3
    assert chisquare(first[:5], q[0, :5] / q[0, :5].sum() * trials).pvalue < 1e-6
    second = [o[1] for o in out if len(o) > 1]  # the token after a kept first draft: its target is p[1]
    counts = torch.bincount(torch.tensor(second), minlength=vocab)
    assert chisquare(counts, p[1] * len(second)).pvalue > 1e-3
    expected = float(torch.minimum(p[0], q[0]).sum())
    share = sum(a >= 1 for a in kept) / trials
    assert abs(share - expected) < 4 * (expected * (1 - expected) / trials) ** 0.5
    # Drafts drawn from the target itself are always kept.
    _, all_kept = draft_and_verify(p, p[:n], 2000, seed=2)
    assert set(all_kept) == {n}


def token_counts(seqs: list[list[int]], pos: int) -> Counter:
    return Counter(s[pos] if len(s) > pos else -1 for s in seqs)


def same_distribution(a: Counter, b: Counter) -> float:
    """The p-value of a chi-square test that two samples of tokens come from one distribution
    (tokens seen fewer than 10 times in both together pooled)."""
    from scipy.stats import chi2_contingency

    common = [t for t in a.keys() | b.keys() if a[t] + b[t] >= 10]
    rest = [sum(c.values()) - sum(c[t] for t in common) for c in (a, b)]
    table = [[a[t] for t in common] + [rest[0]], [b[t] for t in common] + [rest[1]]]
    if rest == [0, 0]:
        table = [row[:-1] for row in table]
    return chi2_contingency(table).pvalue


def test_speculative_sampling_draws_what_the_plain_sampler_draws(tiny_base):
    """The tiny model's first tokens, sampled 400 times each way from one prompt (temperature 0.15,
    where its next token spreads over a handful of candidates; top_p 0.95): drafting with heads fit
    to its greedy replies (so drafts are kept and turned down) gives the distribution the plain
    batched sampler gives at every position; a sampler at another temperature is told apart."""
    from loraloop.lm.generate import generate, stop_ids

    tok, model, prompts = setup(tiny_base)
    n, length, t, top_p = 400, 3, 0.15, 0.95
    stop, prompt = stop_ids(model, tok), prompts[:1]
    greedy, _ = speculative.generate_speculative(model, mtp.MTPHeads(model.config.hidden_size, 3), prompt, 8, set())
    heads = heads_fit_to(model, prompt, greedy, 3)
    drafted, stats = speculative.generate_speculative(
        model, heads, prompt * n, length, stop, t, top_p, list(range(n)), batch_size=64, budget=10**6
    )  # every row drafts all three heads' tokens, whatever the device's verify budget
    assert 10 <= stats.accepted[0] <= stats.drafted[0] - 10, stats.summary()  # both branches of the rule ran

    def plain(temperature: float) -> list[list[int]]:
        made = [[] for _ in range(n)]
        on_token = lambda i, tok_id: made[i].append(tok_id)  # noqa: E731
        generate(
            model,
            tok,
            prompt * n,
            batch_size=64,
            max_new_tokens=length,
            temperature=temperature,
            top_p=top_p,
            seed=10_000,
            desc="",
            progress=False,
            on_token=on_token,
        )
        return made

    same, other = plain(t), plain(0.3)
    for pos in range(length):
        assert same_distribution(token_counts(drafted, pos), token_counts(same, pos)) > 1e-3, pos
    assert min(same_distribution(token_counts(same, pos), token_counts(other, pos)) for pos in range(length)) < 1e-3


def test_sampling_with_a_policy_that_has_heads(project):
    """sample.speculative: `on` drafts with the policy round's heads and records each sample's
    acceptance; `auto` (batch_size 4) and `off` sample as before, byte for byte, with no such key."""
    import dataclasses

    from conftest import workspace

    from loraloop.files import read_jsonl
    from loraloop.lm import sampling

    with_heads = run_round(small_params(init="fresh", mtp_heads=3), project, "tutor-r1", out_name="spec_policy")
    ws = workspace(small_params(), project)
    r2 = ws.round("tutor-r2")
    rows = {}
    for mode in ("on", "auto", "off"):
        p = small_params()
        p = p.model_copy(update={"sample": p.sample.model_copy(update={"speculative": mode})})
        r = dataclasses.replace(
            r2, prev=dataclasses.replace(r2.prev, model=with_heads), data=r2.data.parent / f"spec_{mode}"
        )
        made = sampling.run(p, r, ws.base)
        rows[mode] = list(read_jsonl(r.samples))
        assert (made["speculative"] is not None) == (mode == "on"), made
    assert all("speculative" not in row for row in rows["off"]) and rows["auto"] == rows["off"]
    spec = rows["on"][0]["speculative"]
    assert len(spec["acceptance"]) == 2 and spec["tokens_per_forward"] >= 1.0 and spec["tokens"] >= 1
    assert [r["seed"] for r in rows["on"]] == [r["seed"] for r in rows["off"]]
    assert all(r["response"] for r in rows["on"])
    # auto drafts where prompts go one at a time on a GPU; never from a policy without heads, nor with vLLM.
    policy, sp = dataclasses.replace(r2.prev, model=with_heads), small_params().sample
    auto_at_1 = sampling.heads_of(policy, sp.model_copy(update={"batch_size": 1}))
    assert auto_at_1 == (policy.adapter / mtp.HEADS_FILE if torch.cuda.is_available() else None)
    assert sampling.heads_of(policy, sp.model_copy(update={"speculative": "on"})) == policy.adapter / mtp.HEADS_FILE
    assert sampling.heads_of(policy, sp.model_copy(update={"speculative": "on", "engine": "vllm"})) is None
    assert sampling.heads_of(policy, sp.model_copy(update={"batch_size": 1, "speculative": "off"})) is None
    assert sampling.heads_of(ws.round("tutor-r1").prev, sp.model_copy(update={"speculative": "on"})) is None


def test_prompts_join_a_drafting_batch_as_its_rows_finish(tiny_base, monkeypatch):
    """Seven prompts, at most three rows at once, stop tokens that end rows at different steps,
    heads fit to some replies (rows keep different numbers of drafts): waiting prompts join the
    rows still running (their caches merged, the kept rows' columns shifted), and every prompt's
    greedy tokens and acceptance are those it has alone; no row reads memory nobody wrote."""
    from test_generate import early_stops, greedy_one_at_a_time

    tok, model, prompts = setup(tiny_base)
    stop = early_stops(tok, greedy_one_at_a_time(model, tok, prompts, 16, tok.eos_token_id))
    refs = greedy_one_at_a_time(model, tok, prompts, 16, stop)
    assert len({len(r) for r in refs}) > 2
    heads = heads_fit_to(model, prompts[:3], refs[:3], 3)
    alone, each_alone = [], []
    for p in prompts:
        made, _ = speculative.generate_speculative(model, heads, [p], 16, set(stop), each=each_alone)
        alone += made
    assert alone == refs
    joined, merge = [], speculative.merge
    record = lambda old, new, reserve: joined.append(new.jobs) or merge(old, new, reserve)  # noqa: E731
    monkeypatch.setattr(speculative, "merge", record)
    nan_allocations(monkeypatch)
    each = []
    made, stats = speculative.generate_speculative(model, heads, prompts, 16, set(stop), each=each, batch_size=3)
    assert joined, "no prompt joined running rows"
    assert made == refs
    assert [st.accepted for st in each] == [st.accepted for st in each_alone]
    assert stats.accepted[0] > 0


def test_a_batch_drafts_within_its_verify_budget_and_more_as_rows_finish(tiny_base):
    """A step verifies at most `budget` tokens (rows x (1 + drafts)): seven rows and a budget of 8
    draft nothing (plain steps) until rows finish, then one draft each, then all three heads' once
    two rows remain; a budget of one token never drafts, nor runs a head (not even for the rows'
    first drafts). Every prompt still writes its greedy tokens."""
    from test_generate import early_stops, greedy_one_at_a_time

    assert [speculative.draft_depth(rows, 3, 8) for rows in (8, 7, 5, 4, 3, 2, 1)] == [0, 0, 0, 1, 1, 3, 3]
    tok, model, prompts = setup(tiny_base)
    stop = early_stops(tok, greedy_one_at_a_time(model, tok, prompts, 16, tok.eos_token_id))
    refs = greedy_one_at_a_time(model, tok, prompts, 16, stop)
    heads = heads_fit_to(model, prompts[:3], refs[:3], 3)
    full, _ = speculative.generate_speculative(model, heads, prompts, 16, set(stop), batch_size=7)
    assert full == refs
    each = []
    made, stats = speculative.generate_speculative(
        model, heads, prompts, 16, set(stop), each=each, batch_size=7, budget=8
    )
    assert made == refs
    assert 0 < stats.drafted[2] < stats.drafted[0] < stats.forwards, stats  # some steps drafted, fewer deep
    assert stats.accepted[0] > 0
    calls = []
    heads.register_forward_hook(lambda *_: calls.append(1))
    made, stats = speculative.generate_speculative(model, heads, prompts, 16, set(stop), batch_size=7, budget=1)
    assert made == refs
    assert stats.drafted == [0, 0, 0] and stats.tokens == stats.forwards + len(prompts)
    assert not calls


def test_a_sampled_batch_past_its_budget_draws_what_the_plain_sampler_draws(tiny_base):
    """With no room to draft (budget 1), a sampled batch's steps are the plain sampler's: each row
    picks from the same nucleus with its own generator, so the same seeds give the same tokens."""
    from loraloop.lm.generate import generate

    tok, model, prompts = setup(tiny_base)
    seeds = [11 * i for i in range(len(prompts))]
    heads = mtp.MTPHeads(model.config.hidden_size, 2)
    made, stats = speculative.generate_speculative(
        model, heads, prompts, 12, {tok.eos_token_id}, 0.9, 0.8, seeds, batch_size=len(prompts), budget=1
    )
    plain = generate(
        model, tok, prompts, batch_size=len(prompts), max_new_tokens=12, temperature=0.9, top_p=0.8, seed=0,
        seeds=seeds, desc="", progress=False,
    )  # fmt: skip
    assert [tok.decode(m, skip_special_tokens=True).strip() for m in made] == plain.texts
    assert stats.drafted == [0, 0] and stats.tokens == plain.n_tokens
    assert len(set(plain.texts)) > 1  # the rows drew their own texts


@pytest.mark.parametrize("fit, fused", [(False, 0), (True, 10**6)])
def test_rows_of_a_batch_accept_their_own_drafts_and_write_what_each_writes_alone(tiny_base, fit, fused, monkeypatch):
    """Four prompts of different lengths in one batch, each row keeping as many drafts as it
    accepts and writing its next ones over those it turned down: greedy, every row's tokens are
    plain greedy decoding's, with the acceptance each row has alone (heads at random, or fit to the
    replies, where rows accept different numbers); rows halted at different tokens leave the batch
    there while the others go on to the same tokens; sampled, every row's tokens are what it draws
    alone. Memory the batch allocates starts as NaN: a row must never read what nobody wrote (under
    its mask, 0 x NaN is still NaN). Each step's drafts come from a second product with the output
    layer at the kept positions (fused 0), or from the verifying one at every position (fused)."""
    tok, model, prompts = setup(tiny_base)
    prompts = prompts[:4]
    nan_allocations(monkeypatch)
    monkeypatch.setattr(speculative, "FUSED_MAX_ROWS", fused)
    assert len(set(map(len, prompts))) > 1
    heads = random_heads(model.config.hidden_size, 3, 0.05)
    if fit:
        replies = [greedy_reference(model, tok, p, 12).tolist() for p in prompts]
        heads = heads_fit_to(model, prompts[:2], replies[:2], 3)  # rows 2 and 3 accept fewer
    each, each_alone = [], []
    batched, stats = speculative.generate_speculative(
        model, heads, prompts, 12, {tok.eos_token_id}, each=each, batch_size=4
    )
    for p, got in zip(prompts, batched):
        assert got == greedy_reference(model, tok, p, 12).tolist()
    speculative.generate_speculative(model, heads, prompts, 12, {tok.eos_token_id}, each=each_alone)
    assert [st.accepted for st in each] == [st.accepted for st in each_alone]
    if fit:
        assert stats.accepted[0] > 0 and len({st.forwards for st in each}) > 1, [st.summary() for st in each]
    halted_at = [3, 12, 5, 8]  # tokens each row makes before its halt() says so
    heard = [[] for _ in prompts]
    with ragged(model):
        made = speculative.decode_batch(
            model,
            heads,
            prompts,
            12,
            {tok.eos_token_id},
            [speculative.SpecStats.for_heads(len(heads)) for _ in prompts],
            [speculative.Decoding() for _ in prompts],
            on_token=lambda i, token: heard[i].append(token),
            halt=lambda i: len(heard[i]) >= halted_at[i],
        )
    assert heard == made
    assert made == [want[: halted_at[i]] for i, want in enumerate(batched)]
    seeds = [11, 12, 13, 14]
    sampled = [
        speculative.generate_speculative(model, heads, prompts, 12, set(), 0.7, 0.9, seeds, batch_size=b)[0]
        for b in (1, 4)
    ]
    assert sampled[0] == sampled[1]
