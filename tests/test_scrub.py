import subprocess
import sys

import pytest
from conftest import conversation, write_lines

from stages import scrub
from stages.io import read_json, read_jsonl
from stages.params import ScrubParams
from stages.pii import mask


@pytest.mark.parametrize("text,kind", [
    ("mail me at minji.kim+hw@school.example.com please", "EMAIL"),
    ("제 번호는010-1234-5678이에요", "PHONE"),
    ("call 01012345678", "PHONE"),
    ("+82 10-1234-5678", "PHONE"),
    ("office 02-123-4567", "PHONE"),
    ("my cell is +1 415-555-0123", "PHONE"),
    ("(415) 555-0123", "PHONE"),
    ("주민번호 900101-1234567", "RRN"),
    ("rrn 0312254123456", "RRN"),
])
def test_pii_is_masked(text, kind):
    out, kinds = mask(text)
    assert f"<{kind}_1>" in out and kind in kinds
    assert not any(ch.isdigit() for ch in out.replace(f"<{kind}_1>", "")) or kind == "EMAIL"


@pytest.mark.parametrize("text", [
    "The meeting is on 2026-10-01 at 14:30.",
    "It costs $1,299.99 or 15000원.",
    "Version 3.12.1 fixed it; score 98/100.",
    "ISBN 978-3-16-148410-0 is on page 12.",
    "Solve 2x + 3 = 11, then 7 * 8 = 56.",
])
def test_non_pii_numbers_are_left_alone(text):
    assert mask(text) == (text, [])


def test_placeholders_are_consistent_within_a_conversation():
    seen = {}
    a, _ = mask("write to a@example.com or b@example.com", seen)
    b, _ = mask("did you get it at a@example.com?", seen)
    assert a == "write to <EMAIL_1> or <EMAIL_2>"
    assert b == "did you get it at <EMAIL_1>?"


def test_scrub_stage_counts_and_rejects(tmp_path):
    records = [
        {"id": "1", "dataset_source": "x", "weight": 1.0, **conversation("Hi, I'm a@example.com", "What shall we study today?")},
        {"id": "2", "dataset_source": "x", "weight": 1.0, **conversation("Hi, I'm a@example.com", "What shall we study today?")},
        {"id": "3", "dataset_source": "x", "weight": 1.0, **conversation("Help", "ok")},
        {"id": "4", "dataset_source": "x", "weight": 1.0, **conversation("What is 3+4?", "What is 3+3, and what comes after it?")},
    ]
    src = write_lines(tmp_path / "in.jsonl", records)
    stats = scrub.run(ScrubParams(min_assistant_chars=8), src, tmp_path / "out", tmp_path / "m.json")
    assert stats["read"] == 4 and stats["kept"] == 2
    assert stats["reasons"] == {"exact_duplicate": 1, "too_short_turn": 1}
    kept = list(read_jsonl(tmp_path / "out/tutor/records.jsonl"))
    assert kept[0]["messages"][0]["content"] == "Hi, I'm <EMAIL_1>"
    assert {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "out/rejects.jsonl")} == {"2": "exact_duplicate", "3": "too_short_turn"}
    assert read_json(tmp_path / "m.json")["scrub"]["pii_masked"] == {"EMAIL": 2}


def test_scrub_text_cli_is_line_for_line():
    text = "call 010-1234-5678\n\nplain line\n"
    res = subprocess.run([sys.executable, "-m", "stages.cli", "scrub-text"], input=text, capture_output=True, text=True, check=True)
    assert res.stdout == "call <PHONE_1>\n\nplain line\n"
