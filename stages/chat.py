"""The tokenizer's own chat template, used the same way by sampling, training and evaluation."""

from __future__ import annotations

import random


def render(tok, messages: list[dict], add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tok, text: str) -> list[int]:
    # The template already wrote any special tokens it wants; don't let the tokenizer add more.
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn."""
    return encode(tok, render(tok, messages, add_generation_prompt=True))


def training_ids(tok, messages: list[dict], max_length: int) -> tuple[list[int], list[bool]] | None:
    """Token ids and a per-token mask that is True on assistant tokens (their content and the
    end-of-turn token, so the model learns to stop). None if truncation leaves nothing to learn."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            head = render(tok, messages[:i], add_generation_prompt=True)
            _check_prefix(done, head)
            pieces.append((head[len(done) :], False))
            done = head
        full = render(tok, messages[: i + 1], add_generation_prompt=False)
        _check_prefix(done, full)
        pieces.append((full[len(done) :], m["role"] == "assistant"))
        done = full
    ids: list[int] = []
    mask: list[bool] = []
    for text, trained in pieces:
        piece = encode(tok, text)
        ids.extend(piece)
        mask.extend([trained] * len(piece))
    ids, mask = ids[:max_length], mask[:max_length]
    return (ids, mask) if any(mask) else None


def _check_prefix(prefix: str, text: str) -> None:
    if not text.startswith(prefix):
        raise ValueError(
            "the tokenizer's chat template does not render conversations prefix-stably; "
            "assistant-only loss masking needs a template where each turn appends to the previous text"
        )


def with_system(system_prompt: str | None, messages: list[dict]) -> list[dict]:
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + rest


def cut_for_prompt(messages: list[dict], rng: random.Random) -> list[dict]:
    """A real conversation cut just before one of its assistant turns, chosen at random, so the
    model continues conversations at every depth, not only the opening."""
    cuts = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user"
    ]
    if not cuts:
        raise ValueError("conversation has no assistant turn that follows a user turn")
    return messages[: rng.choice(cuts)]
