"""Quality rules scrub applies to a (masked) conversation. Each returns a reject reason or None."""

from __future__ import annotations

import json
import re
from collections import Counter

from ..params import ScrubParams
from .text import META, in_language

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_WORD = re.compile(r"\w+")


def turn_order_ok(messages: list[dict]) -> bool:
    """An optional system turn first, then user and assistant taking turns, starting with the user;
    an assistant turn that calls tools is followed by their results (tool turns), then the
    assistant again."""
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = {"user"}
    for m in rest:
        if m["role"] not in expected:
            return False
        if m["role"] == "user":
            expected = {"assistant"}
        elif m["role"] == "tool":
            expected = {"tool", "assistant"}
        else:
            expected = {"tool"} if m.get("tool_calls") else {"user"}
    return bool(rest)


def tool_problem(messages: list[dict]) -> str | None:
    """Tool calls whose arguments are not JSON, or tool results that answer no open call (by
    tool_call_id, or in order where the calls or results carry no ids)."""
    open_calls: list = []
    for m in messages:
        if m.get("tool_calls"):
            for call in m["tool_calls"]:
                try:
                    json.loads(call["function"]["arguments"])
                except ValueError:
                    return "bad_tool_arguments"
            open_calls = [call.get("id") for call in m["tool_calls"]]
        elif m["role"] == "tool":
            wanted = m.get("tool_call_id")
            if wanted is not None and wanted in open_calls:
                open_calls.remove(wanted)
            elif open_calls and (wanted is None or None in open_calls):
                open_calls.pop(0)
            else:
                return "unanswered_tool_result"
    return None


def too_short(messages: list[dict], params: ScrubParams) -> bool:
    """A user or assistant turn shorter than its minimum (an assistant turn that only calls tools
    is not text)."""
    limits = {"user": params.min_user_chars, "assistant": params.min_assistant_chars}
    return any(len(m["content"].strip()) < limits.get(m["role"], 0) for m in messages if not m.get("tool_calls"))


def repetition(text: str, p: ScrubParams) -> bool:
    """Gopher-style: too many duplicate lines, one 2-gram dominating, or many repeated 5-grams.
    Only on texts long enough for the fractions to mean something."""
    words = _WORD.findall(text.lower())
    if len(words) < p.repetition.min_words:
        return False
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and 1 - len(set(lines)) / len(lines) > p.repetition.dup_line_frac:
        return True
    chars = sum(len(w) for w in words)
    bigrams = Counter(zip(words, words[1:]))
    ((top, n),) = bigrams.most_common(1)
    if n > 1 and n * (len(top[0]) + len(top[1])) / chars > p.repetition.top_2gram_frac:
        return True
    grams = Counter(tuple(words[i : i + 5]) for i in range(len(words) - 4))
    dup_chars = sum(sum(len(w) for w in g) * (c - 1) for g, c in grams.items() if c > 1)
    return dup_chars / chars > p.repetition.dup_5gram_frac


def spam(text: str, p: ScrubParams) -> str | None:
    links = len(_URL.findall(text))
    words = max(1, len(_WORD.findall(text)))
    if links > p.spam.max_links or (links and links / words > p.spam.max_link_density):
        return "spam_links"
    run = p.spam.max_char_run
    if re.search(r"(\S)\1{%d,}" % (run - 1), text):
        return "spam_repeated_chars"
    return None


def reject_reason(messages: list[dict], p: ScrubParams) -> str | None:
    """The first rule this conversation breaks, or None. Order: structure, then content."""
    if not turn_order_ok(messages):
        return "bad_turn_order"
    why = tool_problem(messages)
    if why:
        return why
    # Content rules judge what is learned from: a weight-0 turn (a negative's bad reply) is kept as it is.
    messages = [m for m in messages if m.get("weight", 1) != 0]
    if too_short(messages, p):
        return "too_short_turn"
    assistant = "\n".join(m["content"] for m in messages if m["role"] == "assistant")
    if p.meta_filter and META.search(assistant):
        return "meta_utterance"
    text = "\n".join(m["content"] for m in messages if m["role"] != "system")
    why = spam(text, p)
    if why:
        return why
    if any(repetition(m["content"], p) for m in messages if m["role"] == "assistant"):
        return "repetition"
    if p.language != "any" and not in_language(text, p.language, p.min_language_ratio):
        return "wrong_language"
    return None
