import random

import pytest

from loraloop.data.prompts import cut_for_prompt, with_system
from loraloop.lm.chat import prompt_ids, training_ids
from loraloop.lm.model import load_tokenizer

CONV = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "What is 7 times 8?"},
    {"role": "assistant", "content": "What is 7 times 4?"},
    {"role": "user", "content": "28"},
    {"role": "assistant", "content": "Great. What happens if you double it?"},
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def test_loss_mask_covers_assistant_turns_and_end_of_turn(tok):
    ids, mask = training_ids(tok, CONV, max_length=512)
    trained = [i for i, m in zip(ids, mask) if m]
    text = tok.decode(trained)
    assert "What is 7 times 4?" in text and "What happens if you double it?" in text
    assert "What is 7 times 8?" not in text and "You are a tutor" not in text and "28" not in text
    # The end-of-turn token is trained, so the model learns to stop.
    assert trained.count(tok.eos_token_id) == 2
    # Tokenizing piecewise gives the same ids as tokenizing the whole rendered conversation.
    full = tok(tok.apply_chat_template(CONV, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids == full


def test_prompt_is_a_prefix_of_training_ids(tok):
    p = prompt_ids(tok, CONV[:2])
    ids, _ = training_ids(tok, CONV[:3], max_length=512)
    assert ids[: len(p)] == p
    assert tok.decode(p).endswith("<|im_start|>assistant\n")


def test_truncation_that_leaves_no_assistant_token_gives_none(tok):
    assert training_ids(tok, CONV, max_length=5) is None
    ids, mask = training_ids(tok, CONV, max_length=40)
    assert len(ids) == 40 and any(mask)


def test_cut_and_system_prompt():
    rng = random.Random(0)
    cuts = {len(cut_for_prompt(CONV[1:], rng)) for _ in range(50)}
    assert cuts == {1, 3}
    msgs = with_system("Be kind.", CONV)
    assert msgs[0] == {"role": "system", "content": "Be kind."} and sum(m["role"] == "system" for m in msgs) == 1
