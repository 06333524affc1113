"""Rule-based scores of a tutor response, each a value in [0, 1] where 1 is what the character
should do. Shared by score (training weights) and eval (metrics), so what training rewards is
exactly what evaluation reports."""

from __future__ import annotations

import re
from collections import Counter

from ..data.text import META, SCRIPTS, in_language, script_share
from ..lm.tool_calls import CLOSE, OPEN
from ..lm.tool_calls import parse as parse_calls
from ..params import RuleParams

# A sentence ends at ., !, ? (and their full-width forms) or a line break.
_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]*")
_QUESTION_END = ("?", "？")
_WORD = re.compile(r"\w+")
# Chat-template markers or role labels in a reply: the model is writing the conversation, not a turn.
_ROLE_LEAK = re.compile(r"<\|im_(?:start|end)\|>|^\s*(?:system|user|assistant)\s*:", re.IGNORECASE | re.MULTILINE)
_RUDE = re.compile(
    r"\b(?:stupid|dumb|idiot|lazy|shut up|obviously you|how do you not know)\b|바보|멍청|한심", re.IGNORECASE
)
_POLITE = re.compile(
    r"\b(?:please|thank|thanks|great|good (?:question|job|start|try|thinking)|well done|nice|let'?s"
    r"|you'?re (?:close|right|on the right track))\b"
    r"|좋아요|좋은 질문|잘했|훌륭|고마워|감사|함께|같이",
    re.IGNORECASE,
)

_TOOL_CALL = re.compile(re.escape(OPEN) + r".*?" + re.escape(CLOSE), re.DOTALL)

RULES = (
    "question_ratio",
    "length",
    "followup_question",
    "balance",
    "politeness",
    "verbosity",
    "meta_leakage",
    "repetition",
    "language",
    "banned_words",
    "tone",
    "tool_call_valid",
)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip(" \t.!?。！？")]


def question_ratio(text: str) -> float:
    sents = sentences(text)
    return sum(s.endswith(_QUESTION_END) for s in sents) / len(sents) if sents else 0.0


def length_score(text: str, window: tuple[int, int]) -> float:
    low, high = window
    n = len(text.strip())
    if n < low:
        return n / low if low else 1.0
    if n > high:
        return max(0.0, 1.0 - (n - high) / high)
    return 1.0


def followup_question(text: str) -> float:
    sents = sentences(text)
    return 1.0 if sents and sents[-1].endswith(_QUESTION_END) else 0.0


def balance(text: str, target: float) -> float:
    """1 when the share of question sentences is the target (a tutor explains a little, then asks)."""
    if not sentences(text):
        return 0.0
    return max(0.0, 1.0 - abs(question_ratio(text) - target) / max(target, 1.0 - target))


def politeness(text: str) -> float:
    """0 with a rude phrase, 1 with an encouraging one, 0.5 for neither."""
    if _RUDE.search(text):
        return 0.0
    return 1.0 if _POLITE.search(text) else 0.5


def verbosity(text: str, max_words: int) -> float:
    """Short sentences score 1; the mean sentence length past max_words falls off linearly."""
    sents = sentences(text)
    if not sents:
        return 1.0
    mean = sum(len(_WORD.findall(s)) for s in sents) / len(sents)
    return 1.0 if mean <= max_words else max(0.0, 1.0 - (mean - max_words) / max_words)


def meta_leakage(text: str) -> float:
    """0 when the reply talks about being an AI / its prompt, or writes chat markup; else 1."""
    return 0.0 if META.search(text) or _ROLE_LEAK.search(text) else 1.0


def repetition(text: str, n: int) -> float:
    """1 minus the share of word n-grams that repeat an earlier one."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 1.0
    return len(Counter(grams)) / len(grams)


def dominant_script(text: str) -> str | None:
    shares = {lang: script_share(text, lang) for lang in SCRIPTS}
    if not any(c.isalpha() for c in text):
        return None
    lang, share = max(shares.items(), key=lambda kv: kv[1])
    return lang if share >= 0.5 else None


def language(text: str, user_text: str | None, policy: str = "match") -> float:
    """policy match: the share of the reply's letters in the script the student wrote in (1 if
    undetermined). A language code: the share in that language's script, or for a language that
    shares its script (en, es, ...), 1 when language ID names it."""
    if policy != "match":
        own_script = policy in SCRIPTS and policy != "en"
        return script_share(text, policy) if own_script else float(in_language(text, policy, 0.5))
    lang = dominant_script(user_text) if user_text else None
    return 1.0 if lang is None else script_share(text, lang)


def banned_words(text: str, banned: list[str]) -> float:
    low = text.lower()
    return 0.0 if any(w.lower() in low for w in banned) else 1.0


def tone(text: str, keywords: list[str]) -> float:
    low = text.lower()
    return 1.0 if any(k.lower() in low for k in keywords) else 0.0


def tool_call_valid(text: str, tools: list | None) -> float | None:
    """1 when every <tool_call>...</tool_call> in the reply is JSON naming a declared tool with
    arguments that satisfy its parameters schema, else 0; None (not judged) for a reply that
    calls nothing."""
    parsed = parse_calls(text, tools)
    return None if not parsed.called else float(not parsed.problems)


def rule_values(
    text: str,
    params: RuleParams,
    messages: list[dict] | None = None,
    character_id: str | None = None,
    tools: list | None = None,
) -> dict[str, float]:
    """Every rule's value for one reply. `messages` is the conversation it answers (for the
    language rule), `character_id` picks the tone keywords; a character without keywords has no
    tone value, so it is neither rewarded nor punished for it. A reply that calls tools is judged
    on the call (tool_call_valid) and on its text around the calls; one that is only calls, on the
    calls alone."""
    call = tool_call_valid(text, tools)
    if call is not None:
        text = _TOOL_CALL.sub("", text).replace(OPEN, "").strip()
        if not text:
            return {"tool_call_valid": call}
    user_text = next((m["content"] for m in reversed(messages or []) if m["role"] == "user"), None)
    values = {
        "question_ratio": question_ratio(text),
        "length": length_score(text, params.length_window),
        "followup_question": followup_question(text),
        "balance": balance(text, params.balance_target),
        "politeness": politeness(text),
        "verbosity": verbosity(text, params.max_words_per_sentence),
        "meta_leakage": meta_leakage(text),
        "repetition": repetition(text, params.repetition_ngram),
        "language": language(text, user_text, params.language),
        "banned_words": banned_words(text, params.banned_words),
    }
    keywords = params.tone_keywords.get(character_id or "", [])
    if keywords:
        values["tone"] = tone(text, keywords)
    if call is not None:
        values["tool_call_valid"] = call
    return values


def weighted_total(values: dict[str, float], weights: dict[str, float]) -> float:
    """The weighted mean over the values present (a rule with weight 0 only informs)."""
    total_w = sum(weights.get(k, 0.0) for k in values)
    return sum(weights.get(k, 0.0) * v for k, v in values.items()) / total_w if total_w else 0.0


def score_text(text: str, params: RuleParams, *context) -> tuple[dict[str, float], float]:
    """Per-rule values and their weighted mean; `context` (messages, character_id, tools) as
    rule_values takes it."""
    values = rule_values(text, params, *context)
    return values, weighted_total(values, params.weights.model_dump())
