"""The batched sampler against plain one-prompt-at-a-time `generate` on the tiny model."""

from types import SimpleNamespace

import pytest
import torch

from loraloop.data.prompts import with_system
from loraloop.lm import batch as lm_batch
from loraloop.lm import cpu_matmul, prefill
from loraloop.lm import generate as gen
from loraloop.lm.chat import prompt_ids
from loraloop.lm.model import load_base, load_tokenizer

SYSTEM = "You are a patient tutor. Ask one short guiding question at a time."
QUESTIONS = [
    "What is 3/4 + 1/8?",
    "hi",
    "Why is the sky blue? Explain it like I am ten years old please.",
    "다음 문제를 어떻게 풀어요?",
    "2+2",
    "What is a verb?",
    "Help me with fractions, I keep adding the bottoms.",
]


def setup(tiny_base):
    tok = load_tokenizer(tiny_base / "base")
    model = load_base(tiny_base / "base")
    # At its init scale (std 0.02) the tiny model answers every prompt with newlines, so comparing
    # texts would prove little; larger random weights make every prompt's answer its own.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    prompts = [prompt_ids(tok, with_system(SYSTEM, [{"role": "user", "content": q}])) for q in QUESTIONS]
    return tok, model, prompts


def greedy_reference(model, tok, prompt: list[int], max_new_tokens: int) -> torch.Tensor:
    """transformers' greedy `generate` of one prompt: its new tokens."""
    ids = torch.tensor([prompt])
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )[0, len(prompt) :]


def test_shared_prefix_is_found_and_leaves_each_prompt_a_token():
    assert prefill.common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert prefill.common_prefix([[1, 2], [1, 2]]) == 1
    assert prefill.common_prefix([[7], [8, 9]]) == 0


def test_batched_greedy_equals_one_at_a_time(tiny_base):
    tok, model, prompts = setup(tiny_base)
    assert prefill.common_prefix(prompts) > 10  # the system prompt is shared and computed once
    out = gen.generate(
        model,
        tok,
        prompts,
        batch_size=4,
        max_new_tokens=12,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        desc="",
        progress=False,
    )
    n = 0
    for p, text in zip(prompts, out.texts):
        ref = greedy_reference(model, tok, p, 12)
        n += len(ref)
        assert text == tok.decode(ref, skip_special_tokens=True).strip()
    assert out.n_tokens == n


def count_linear_calls(m, calls: list[int]) -> None:
    """While `m` (a monkeypatch context) lasts, torch's linear appends each weight's row count to
    `calls`."""
    linear = torch.nn.functional.linear
    m.setattr(torch.nn.functional, "linear", lambda x, w, b=None: calls.append(w.shape[0]) or linear(x, w, b))


@pytest.mark.parametrize("rows", [cpu_matmul.OUTPUT_BLOCK_ROWS, 3000])  # 3000: a last block shorter than the rest
def test_the_output_layer_in_blocks_gives_bit_identical_logits_and_is_put_back(tiny_base, monkeypatch, rows):
    tok, model, prompts = setup(tiny_base)
    head = model.get_output_embeddings()
    assert head.out_features > 2 * rows  # else there would be nothing to split
    blocks = []
    linear = torch.nn.functional.linear
    g = torch.Generator().manual_seed(1)
    for n in (1, 5, 64):
        x = torch.randn(n, 1, head.in_features, generator=g)
        whole = head(x)
        blocks.clear()
        with cpu_matmul.cpu_linears(model, rows, pack=False), monkeypatch.context() as m:
            count_linear_calls(m, blocks)
            split = head(x)
        assert blocks == [rows] * (head.out_features // rows) + [head.out_features % rows] * bool(
            head.out_features % rows
        )
        assert torch.equal(split, whole)
    assert "forward" not in vars(head)  # the layer is itself again
    hooked = head.forward = lambda x: linear(x, head.weight)  # as an accelerate hook replaces it
    with cpu_matmul.cpu_linears(model, rows, pack=False):
        assert head.forward is hooked  # left alone, not replaced and then deleted
    assert head.forward is hooked
    del head.forward
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        whole = model(input_ids=ids).logits
        with cpu_matmul.cpu_linears(model, rows, pack=False):
            assert torch.equal(model(input_ids=ids).logits, whole)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_decode_rows_run_on_packed_weights_and_prefill_rows_on_torch_s_matmul(tiny_base, monkeypatch):
    tok, model, prompts = setup(tiny_base)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    head = model.get_output_embeddings()
    calls = []
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for n in (1, 7, cpu_matmul.PACKED_MAX_ROWS, cpu_matmul.PACKED_MAX_ROWS + 1, 300):
            x = torch.randn(n, 1, head.in_features, generator=g)
            whole = [m(x[..., : m.in_features]) for m in (head, linears[0])]
            calls.clear()
            with cpu_matmul.cpu_linears(model, rows=3000), monkeypatch.context() as m:
                count_linear_calls(m, calls)
                assert all("forward" in vars(layer) for layer in linears)
                packed = [layer(x[..., : layer.in_features]) for layer in (head, linears[0])]
            if n <= cpu_matmul.PACKED_MAX_ROWS:  # oneDNN: the same products, summed in another order
                assert calls == []
                for a, b in zip(packed, whole):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            else:  # torch's matmul, the head in blocks: bit-identical
                assert calls == [3000] * (head.out_features // 3000) + [
                    head.out_features % 3000,
                    linears[0].out_features,
                ]
                assert all(torch.equal(a, b) for a, b in zip(packed, whole))
    assert not any("forward" in vars(layer) for layer in linears)  # every layer is itself again

    # Where free memory would not hold the packed copy twice over, nothing is packed; the head
    # still runs in blocks.
    import psutil

    copy = sum(layer.weight.numel() * 4 for layer in linears)
    assert cpu_matmul._can_pack(linears)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2 * copy - 1))
    assert not cpu_matmul._can_pack(linears)
    with cpu_matmul.cpu_linears(model, rows=3000):
        assert [layer for layer in linears if "forward" in vars(layer)] == [head]


def test_a_sample_depends_on_its_seed_not_its_batch(tiny_base):
    tok, model, prompts = setup(tiny_base)
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, desc="", progress=False)
    a = gen.generate(model, tok, prompts, batch_size=2, seed=5, **kw)
    b = gen.generate(model, tok, prompts, batch_size=7, seed=5, **kw)
    c = gen.generate(model, tok, prompts, batch_size=7, seed=6, **kw)
    assert a.texts == b.texts and a.seeds == list(range(5, 12))
    assert a.texts != c.texts


def test_no_prompts_make_nothing_and_no_new_tokens_is_refused(tiny_base):
    tok, model, prompts = setup(tiny_base)
    kw = dict(batch_size=4, temperature=0.0, top_p=1.0, seed=0, desc="", progress=False)
    assert gen.generate(model, tok, [], max_new_tokens=4, **kw) == gen.Generation(texts=[], seeds=[], n_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        gen.generate(model, tok, prompts, max_new_tokens=0, **kw)


def test_copies_of_a_prompt_are_prefilled_once_and_sample_as_if_alone(tiny_base):
    tok, model, prompts = setup(tiny_base)
    jobs = [p for p in prompts[:4] for _ in range(3)]  # as sample@rN lays out samples_per_prompt 3
    prefilled = []
    forward = model.forward

    def counting(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and kwargs.get("past_key_values") is not None:  # a prefill pass (after the prefix)
            prefilled.append(ids.shape[0])
        return forward(*args, **kwargs)

    model.forward = counting
    kw = dict(batch_size=12, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3, desc="", progress=False)
    shared = gen.generate(model, tok, jobs, **kw)
    rows_shared, prefilled[:] = sum(prefilled), []
    apart = gen.generate(model, tok, jobs, share_copies=False, **kw)
    assert (rows_shared, sum(prefilled)) == (4, 12)
    assert shared.texts == apart.texts and shared.n_tokens == apart.n_tokens
    assert len(set(shared.texts)) > 4  # the copies sample apart, each with its own seed
    greedy = gen.generate(model, tok, jobs, **{**kw, "temperature": 0.0})
    assert all(greedy.texts[i] == greedy.texts[i - i % 3] for i in range(len(jobs)))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = {int(gen.pick_next(logits, 1.0, 0.7, [torch.Generator().manual_seed(s)])[0]) for s in range(200)}
    assert picks == {0, 1}


def test_the_nucleus_from_the_top_k_is_the_one_a_full_sort_finds():
    torch.manual_seed(0)
    for logits in (torch.randn(3, 5000) * 4, torch.randn(3, 5000) * 0.1):  # peaked, and nearly flat (k grows)
        probs = torch.softmax(logits, -1)
        kept, ids = gen.nucleus(probs, 0.9)
        full, order = probs.sort(-1, descending=True)
        want = full.masked_fill(full.cumsum(-1) - full > 0.9, 0.0)
        for row in range(3):
            mine = {int(i) for i, p in zip(ids[row], kept[row]) if p > 0}
            assert mine == {int(i) for i, p in zip(order[row], want[row]) if p > 0}


def test_sampling_draws_each_token_as_often_as_its_nucleus_probability():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]]))
    draws = [int(gen.pick_next(logits, 1.0, 0.85, [torch.Generator().manual_seed(s)])[0]) for s in range(6000)]
    share = [draws.count(t) / len(draws) for t in range(5)]
    assert share[3] == share[4] == 0  # outside the nucleus {0, 1, 2}
    for t, p in enumerate((0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9)):
        assert abs(share[t] - p) < 0.025, (t, share[t], p)
    everything = [int(gen.pick_next(logits, 1.0, 1.0, [torch.Generator().manual_seed(s)])[0]) for s in range(6000)]
    assert abs(everything.count(4) / 6000 - 0.04) < 0.01


def test_a_draw_that_rounds_onto_the_total_takes_the_last_token_that_can_be_drawn():
    """inverse_cdf, which the plain sampler and speculative sampling both draw with: u places a
    draw on each row's cumulative probabilities; u x total rounding onto the total (u = 1 here)
    takes the row's last token of nonzero probability, not the nucleus's zero padding after it."""
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0, 0.0], [0.2, 0.0, 0.3, 0.0, 0.0]])
    at = lambda u: gen.inverse_cdf(probs, torch.tensor(u)).tolist()  # noqa: E731
    assert at([0.0, 0.0]) == [0, 0]
    assert at([0.6, 0.5]) == [1, 2]  # row 1: 0.5 x 0.5 = 0.25 lies past 0.2, on token 2
    assert at([1.0, 1.0]) == [2, 2]


def greedy_one_at_a_time(model, tok, prompts, max_new_tokens, eos):
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        outs.append(
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )[0, len(p) :].tolist()
        )
    return outs


def test_rows_that_stop_early_leave_the_batch_and_the_others_go_on(tiny_base, monkeypatch):
    tok, model, prompts = setup(tiny_base)
    refs = greedy_one_at_a_time(model, tok, prompts, 16, tok.eos_token_id)
    assert len({tuple(r) for r in refs}) == len(refs)
    # Stop tokens that some prompts emit at different steps: those rows end early, the rest go on,
    # and the finished ones leave the batch mid-generation.
    stops = early_stops(tok, refs)
    monkeypatch.setattr(model.generation_config, "eos_token_id", stops)
    compactions = []
    real = lm_batch.compaction_order
    monkeypatch.setattr(lm_batch, "compaction_order", lambda *a: compactions.append(a) or real(*a))
    out = gen.generate(
        model,
        tok,
        prompts,
        batch_size=7,
        max_new_tokens=16,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        desc="",
        progress=False,
    )
    refs = greedy_one_at_a_time(model, tok, prompts, 16, stops)
    assert len({len(r) for r in refs}) > 2 and max(map(len, refs)) == 16
    assert compactions
    assert out.texts == [tok.decode(r, skip_special_tokens=True).strip() for r in refs]
    assert out.n_tokens == sum(map(len, refs))


def early_stops(tok, refs):
    """Stop tokens that some prompts emit at different steps (as refs, greedy, show them)."""
    return [tok.eos_token_id, refs[0][3], refs[2][6], refs[4][1], refs[5][2]]


def nan_allocations(monkeypatch) -> None:
    """Memory allocated without values (torch.empty and its kin) starts as NaN: code that reads
    what it never wrote shows it, even under a mask (0 x NaN is NaN), instead of by chance."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty
    nan = float("nan")
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(nan))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(nan))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: new_empty(self, *a, **k).fill_(nan))


def test_a_batch_down_to_half_takes_in_waiting_prompts_and_greedy_still_equals_generate(tiny_base, monkeypatch):
    """Rows leave, waiting prompts join (their caches merged), and greedy texts stay those of
    `generate` one prompt at a time; no row reads cache memory nobody wrote."""
    tok, model, prompts = setup(tiny_base)
    stops = early_stops(tok, greedy_one_at_a_time(model, tok, prompts, 16, tok.eos_token_id))
    monkeypatch.setattr(model.generation_config, "eos_token_id", stops)
    joined = []
    real = gen.merge
    monkeypatch.setattr(gen, "merge", lambda old, new, reserve: joined.append(new.jobs) or real(old, new, reserve))
    kw = dict(max_new_tokens=16, temperature=0.0, top_p=1.0, seed=0, desc="", progress=False)
    with monkeypatch.context() as nan:
        nan_allocations(nan)
        out = gen.generate(model, tok, prompts, batch_size=3, **kw)
    refs = greedy_one_at_a_time(model, tok, prompts, 16, stops)
    assert len({len(r) for r in refs}) > 2
    assert joined  # rows still running were joined by waiting prompts, their caches merged
    assert out.texts == [tok.decode(r, skip_special_tokens=True).strip() for r in refs]
    assert out.n_tokens == sum(map(len, refs))
    # Sampling too: a sample depends on its seed, not on which rows joined its batch when.
    sampled = dict(kw, temperature=1.0, top_p=0.9)
    alone = [
        gen.generate(model, tok, [p], batch_size=1, seeds=[9 + i], **sampled).texts[0] for i, p in enumerate(prompts)
    ]
    assert gen.generate(model, tok, prompts, batch_size=3, seeds=list(range(9, 16)), **sampled).texts == alone


def test_rows_are_grouped_by_length_within_the_cap():
    sizes = [3, 4, 4, 5, 20, 21, 22, 90]
    runs = prefill.split_rows(sizes, group_cost=8, cap=80)
    assert [r for a, b in runs for r in range(a, b)] == list(range(len(sizes)))  # every row once, in order
    assert runs == [(0, 4), (4, 7), (7, 8)]  # the short, the middling and the long one
    assert prefill.split_rows(sizes, group_cost=8, cap=64)[1] == (4, 6)  # 3 x 22 would pass the cap
    assert prefill.split_rows(sizes, group_cost=10_000) == [(0, 8)]  # calls so dear that one group is best
    assert prefill.split_rows([5] * 6, group_cost=1, cap=10) == [(0, 2), (2, 4), (4, 6)]


def test_compaction_keeps_groups_contiguous_and_never_overwrites_a_row_before_it_moves():
    rng = torch.Generator().manual_seed(0)
    for _ in range(200):
        cuts = sorted(torch.randperm(19, generator=rng)[:4].add(1).tolist())
        bounds = [0, *cuts, 20]
        groups = [(a, b, 100 - a) for a, b in zip(bounds, bounds[1:])]
        keep = sorted(torch.randperm(20, generator=rng)[: int(torch.randint(1, 20, (1,), generator=rng))].tolist())
        order, after = lm_batch.compaction_order(groups, keep)
        assert sorted(order) == keep
        assert all(r >= i for i, r in enumerate(order))  # moves go down, so ascending copies are safe
        for a, b, first in after:  # each new group holds only its old group's rows
            old = next(g for g in groups if g[2] == first)
            assert all(old[0] <= order[i] < old[1] for i in range(a, b))
        assert [r for a, b, _ in after for r in range(a, b)] == list(range(len(keep)))


def test_models_with_sliding_window_attention_are_refused_not_sampled_wrongly(tiny_base, monkeypatch):
    tok, model, prompts = setup(tiny_base)
    monkeypatch.setattr(model.config, "sliding_window", 8, raising=False)
    with pytest.raises(ValueError, match="sliding-window attention"):
        gen.generate(
            model,
            tok,
            prompts,
            batch_size=4,
            max_new_tokens=4,
            temperature=0.0,
            top_p=1.0,
            seed=0,
            desc="",
            progress=False,
        )
    monkeypatch.setattr(model.config, "sliding_window", 4096, raising=False)  # wider than the context: fine
    assert len(
        gen.generate(
            model,
            tok,
            prompts,
            batch_size=4,
            max_new_tokens=4,
            temperature=0.0,
            top_p=1.0,
            seed=0,
            desc="",
            progress=False,
        ).texts
    ) == len(prompts)


@pytest.mark.parametrize("rows_of_mask", [1, 3])
def test_grouped_attention_is_attention_over_repeated_keys(rows_of_mask):
    """grouped_sdpa (a drafting step's few query tokens over a grouped-query cache, keys not
    repeated) gives what SDPA over keys and values repeated per query head gives, under a mask
    that hides different columns per row and per query token."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from loraloop.lm.kv_cache import grouped_sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g) for shape in ((3, 6, 4, 8), (3, 2, 11, 8), (3, 2, 11, 8)))
    seen = torch.rand((rows_of_mask, 1, 4, 11), generator=g) > 0.3
    seen[..., 0] = True  # every query sees a column
    want = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=seen)
    got = grouped_sdpa(q, k, v, seen, None)
    assert got.shape == (3, 4, 6, 8)
    torch.testing.assert_close(got, want.transpose(1, 2))
