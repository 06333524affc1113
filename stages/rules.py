"""Rule-based scores of a tutor response, each a value in [0, 1]. Shared by score (training
weights) and eval (metrics), so what training rewards is exactly what evaluation reports."""

from __future__ import annotations

import re

from .params import ScoreParams

# A sentence ends at ., !, ? (and their full-width forms) or a line break.
_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]*")
_QUESTION_END = ("?", "？")


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


def score_text(text: str, params: ScoreParams) -> tuple[dict[str, float], float]:
    """Per-rule values and their weighted mean."""
    values = {
        "question_ratio": question_ratio(text),
        "length": length_score(text, params.length_window),
        "followup_question": followup_question(text),
    }
    weights = params.weights.model_dump()
    total_w = sum(weights.values())
    total = sum(weights[k] * v for k, v in values.items()) / total_w if total_w else 0.0
    return values, total
