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


def test_recall_and_precision_over_the_generated_corpus():
    """Every region's numbers from libphonenumber's metadata, dates in every written form,
    hotlines: recall at least 0.99 per kind, at most 1% of clean lines changed."""
    from collections import Counter

    from pii_corpus import ALL_NEGATIVES, ALL_POSITIVES

    found, total = Counter(), Counter()
    for text, kind, value in ALL_POSITIVES:
        total[kind] += 1
        found[kind] += value not in mask(text)[0]
    recall = {k: found[k] / total[k] for k in total}
    assert all(r >= 0.99 for r in recall.values()), recall
    changed = [t for t in ALL_NEGATIVES if mask(t)[0] != t]
    assert len(changed) <= 0.01 * len(ALL_NEGATIVES), changed[:10]
    assert total["PHONE"] > 1000 and len(ALL_NEGATIVES) > 500  # the generated families are there


def test_a_phone_word_admits_any_regions_national_format_and_hotlines_stay():
    assert mask("my number is 050-234-5678")[0] == "my number is <PHONE_1>"  # Israel, not a phone region
    assert mask("050-234-5678")[0] == "050-234-5678"  # without the word, not a KR/US number
    assert mask("연락처 01098765432")[0] == "연락처 <PHONE_1>" and mask("ID 01098765432")[0] == "ID 01098765432"
    assert mask("call 1588-1234")[0] == "call 1588-1234"  # universal access: a company's
    assert mask("+82 10 2000 0000")[0] == "<PHONE_1>" and mask("010·2000·0000 전화")[0] == "<PHONE_1> 전화"
