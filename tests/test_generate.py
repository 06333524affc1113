"""The batched sampler against plain one-prompt-at-a-time `generate` on the tiny model."""

import torch

from stages import generate as gen
from stages.chat import prompt_ids, with_system
from stages.model import load_base, load_tokenizer

SYSTEM = "You are a patient tutor. Ask one short guiding question at a time."
QUESTIONS = ["What is 3/4 + 1/8?", "hi", "Why is the sky blue? Explain it like I am ten years old please.",
             "다음 문제를 어떻게 풀어요?", "2+2", "What is a verb?", "Help me with fractions, I keep adding the bottoms."]


def setup(tiny_base):
    tok = load_tokenizer(tiny_base / "base")
    model = load_base(tiny_base / "base")
    prompts = [prompt_ids(tok, with_system(SYSTEM, [{"role": "user", "content": q}])) for q in QUESTIONS]
    return tok, model, prompts


def test_shared_prefix_is_found_and_leaves_each_prompt_a_token():
    assert gen.common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert gen.common_prefix([[1, 2], [1, 2]]) == 1
    assert gen.common_prefix([[7], [8, 9]]) == 0


def test_batched_greedy_equals_one_at_a_time(tiny_base):
    tok, model, prompts = setup(tiny_base)
    assert gen.common_prefix(prompts) > 10   # the system prompt is shared and computed once
    out = gen.generate(model, tok, prompts, batch_size=4, max_new_tokens=12, temperature=0.0, top_p=1.0,
                       seed=0, desc="", progress=False)
    n = 0
    for p, text in zip(prompts, out.texts):
        ids = torch.tensor([p])
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(p):]
        n += len(ref)
        assert text == tok.decode(ref, skip_special_tokens=True).strip()
    assert out.n_tokens == n


def test_a_sample_depends_on_its_seed_not_its_batch(tiny_base):
    tok, model, prompts = setup(tiny_base)
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, desc="", progress=False)
    a = gen.generate(model, tok, prompts, batch_size=2, seed=5, **kw)
    b = gen.generate(model, tok, prompts, batch_size=7, seed=5, **kw)
    c = gen.generate(model, tok, prompts, batch_size=7, seed=6, **kw)
    assert a.texts == b.texts and a.seeds == list(range(5, 12))
    assert a.texts != c.texts


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = {int(gen.pick_next(logits, 1.0, 0.7, [torch.Generator().manual_seed(s)])[0]) for s in range(200)}
    assert picks == {0, 1}
