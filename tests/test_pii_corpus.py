"""Recall and false positives on a corpus written from the specifications (tests/pii_corpus.py)."""

import pytest
from pii_corpus import NEGATIVES, POSITIVES

from loraloop.data.pii import mask


@pytest.mark.parametrize("text,kind,value", POSITIVES, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(POSITIVES)])
def test_personal_data_is_masked(text, kind, value):
    out, kinds = mask(text)
    assert value in text and value not in out, out
    assert kind in kinds, (out, kinds)
    # Masked as itself, not as pieces of other kinds: the value's place holds one placeholder.
    start = text.index(value)
    assert out[:start] == text[:start] and out[start:].startswith(f"<{kind}_"), out


@pytest.mark.parametrize("text", NEGATIVES)
def test_everything_else_is_left_alone(text):
    assert mask(text) == (text, [])
