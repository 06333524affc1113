import json
import subprocess
import sys

import pytest
from conftest import conversation, write_lines

from loraloop.data import scrub
from loraloop.data.pii import mask
from loraloop.files import read_json, read_jsonl
from loraloop.params import ScrubParams


@pytest.mark.parametrize(
    "text,kind",
    [
        ("mail me at minji.kim+hw@school.example.com please", "EMAIL"),
        ("제 번호는010-1234-5678이에요", "PHONE"),
        ("call 01012345678", "PHONE"),
        ("+82 10-1234-5678", "PHONE"),
        ("office 02-123-4567", "PHONE"),
        ("my cell is +1 415-555-0123", "PHONE"),
        ("(415) 555-0123", "PHONE"),
        ("주민번호 900101-1234567", "RRN"),
        ("rrn 0312254123456", "RRN"),
    ],
)
def test_pii_is_masked(text, kind):
    out, kinds = mask(text)
    assert f"<{kind}_1>" in out and kind in kinds
    assert not any(ch.isdigit() for ch in out.replace(f"<{kind}_1>", "")) or kind == "EMAIL"


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on 2026-10-01 at 14:30.",
        "It costs $1,299.99 or 15000원.",
        "Version 3.12.1 fixed it; score 98/100.",
        "ISBN 978-3-16-148410-0 is on page 12.",
        "Solve 2x + 3 = 11, then 7 * 8 = 56.",
    ],
)
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
        {
            "id": "1",
            "dataset_source": "x",
            "weight": 1.0,
            **conversation("Hi, I'm a@example.com", "What shall we study today?"),
        },
        {
            "id": "2",
            "dataset_source": "x",
            "weight": 1.0,
            **conversation("Hi, I'm a@example.com", "What shall we study today?"),
        },
        {"id": "3", "dataset_source": "x", "weight": 1.0, **conversation("Help", "ok")},
        {
            "id": "4",
            "dataset_source": "x",
            "weight": 1.0,
            **conversation("What is 3+4?", "What is 3+3, and what comes after it?"),
        },
    ]
    src = write_lines(tmp_path / "in.jsonl", records)
    stats = scrub.run(ScrubParams(min_assistant_chars=8), src, tmp_path / "out", tmp_path / "m.json")
    assert stats["read"] == 4 and stats["kept"] == 2
    assert stats["reasons"] == {"exact_duplicate": 1, "too_short_turn": 1}
    kept = list(read_jsonl(tmp_path / "out/tutor/records.jsonl"))
    assert kept[0]["messages"][0]["content"] == "Hi, I'm <EMAIL_1>"
    assert {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "out/rejects.jsonl")} == {
        "2": "exact_duplicate",
        "3": "too_short_turn",
    }
    assert read_json(tmp_path / "m.json")["scrub"]["pii_masked"] == {"EMAIL": 2}


def test_scrub_text_cli_is_line_for_line():
    text = "call 010-1234-5678\n\nplain line\n"
    res = subprocess.run(
        [sys.executable, "-m", "loraloop.cli", "scrub-text"], input=text, capture_output=True, text=True, check=True
    )
    assert res.stdout == "call <PHONE_1>\n\nplain line\n"


@pytest.mark.parametrize(
    "text,kind",
    [
        ("card 4111 1111 1111 1111 thanks", "CARD"),
        ("카드 5500-0000-0000-0004로 냈어요", "CARD"),
        ("계좌 110-123-456789로 보내주세요", "ACCOUNT"),
        ("account 1002-34-567890-1 please", "ACCOUNT"),
        ("server at 192.168.10.24 is down", "IP"),
        ("ipv6 2001:db8:85a3::8a2e:370:7334 here", "IP"),
        ("서울특별시 강남구 테헤란로 152에 살아요", "ADDRESS"),
        ("강남구 역삼동 123-45번지", "ADDRESS"),
        ("I live at 221 Baker Street, Apt 2B now", "ADDRESS"),
        ("post-2020 number 211015-3987654 too", "RRN"),
    ],
)
def test_more_pii_kinds(text, kind):
    out, kinds = mask(text)
    assert kinds == [kind] and f"<{kind}_1>" in out, out


@pytest.mark.parametrize(
    "text",
    [
        "Order 4111 1111 1111 1112 failed",  # not Luhn-valid
        "rrn-like 901345-1234567 has month 13",  # not a date
        "rrn-like 900230-1234567 has Feb 30",
        "Chapter 3.12.1.400 of the book",  # not an IPv4 (400)
        "It is 12:30:45 now",  # a time, not IPv6
        "연구 결과로 3가지를 알았어요",  # the particle 로, then a count
        "그걸로 25%를 어떻게 구할까요?",
        "Logged 2026-10-01 14:30, lesson 3-2-1",  # dates and numbering, too few digits for an account
    ],
)
def test_more_non_pii_left_alone(text):
    assert mask(text) == (text, [])


def test_rrn_checksum_is_confidence_not_a_filter():
    from loraloop.data.pii import rrn_checksum_ok

    assert rrn_checksum_ok("9001011234568") != rrn_checksum_ok("9001011234567")
    # Both are masked: numbers issued after October 2020 carry no valid check digit.
    assert mask("9001011234568")[1] == ["RRN"] and mask("9001011234567")[1] == ["RRN"]


def test_record_names_and_params_names_are_masked(tmp_path):
    rec = {
        "id": "1",
        "dataset_source": "x",
        "weight": 1.0,
        "pii_names": ["minji42", "user_0042"],
        **conversation(
            "I'm Minji42 (user_0042), my tutor is Mr. Park", "Nice to meet you, minji42. What shall we study?"
        ),
    }
    out, kinds = scrub.scrub_record(rec, ["Mr. Park"])
    assert out["messages"][0]["content"] == "I'm <NAME_1> (<NAME_2>), my tutor is <NAME_3>"
    assert out["messages"][1]["content"].startswith("Nice to meet you, <NAME_1>.")
    assert "pii_names" not in out and kinds["NAME"] == 4


def test_rejected_response_of_a_dpo_pair_is_masked():
    rec = {
        "id": "1",
        "dataset_source": "x",
        "weight": 1.0,
        "rejected": "Mail a@example.com the answer",
        **conversation("hi, I'm a@example.com", "What do you want to learn?"),
    }
    out, _ = scrub.scrub_record(rec, [])
    assert out["rejected"] == "Mail <EMAIL_1> the answer"


def scrub_rows(tmp_path, rows, **params):
    src = write_lines(
        tmp_path / "in.jsonl", [{"dataset_source": "x", "weight": 1.0, "id": str(i), **r} for i, r in enumerate(rows)]
    )
    stats = scrub.run(ScrubParams(**params), src, tmp_path / "out", tmp_path / "m.json")
    return stats, {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "out/rejects.jsonl")}


def test_each_quality_rule(tmp_path):
    long_repeat = "\n".join(["Practice the steps again and again until it sticks."] * 8)
    rows = [
        conversation("What is 2+3?", "What do you get if you count up three from two?"),  # kept
        {
            **conversation("hi", "x" * 20),
            "messages": [{"role": "assistant", "content": "Hello there!"}, {"role": "user", "content": "hi"}],
        },  # bad_turn_order
        conversation("Who are you?", "As an AI language model, I cannot have feelings."),  # meta_utterance
        conversation("너는 누구야?", "저는 AI라서 감정이 없어요. 무엇을 도와줄까요?"),  # meta_utterance (ko)
        conversation("links?", "see http://a.example http://b.example http://c.example http://d.example"),  # spam_links
        conversation("wow", "Great job!!!!!!!!!!!!!!!!"),  # spam_repeated_chars
        conversation("How do I study?", long_repeat),  # repetition
    ]
    stats, reasons = scrub_rows(tmp_path, rows)
    assert reasons == {
        "1": "bad_turn_order",
        "2": "meta_utterance",
        "3": "meta_utterance",
        "4": "spam_links",
        "5": "spam_repeated_chars",
        "6": "repetition",
    }
    assert stats["kept"] == 1 and stats["read"] == stats["kept"] + stats["rejected"]
    assert stats["per_character"]["tutor"]["reasons"]["meta_utterance"] == 2


def test_language_policy(tmp_path):
    rows = [
        conversation("1/2 더하기 1/3은요?", "두 분모가 무엇이 같아야 할까요?"),
        conversation("What is a fraction?", "What do you think the bottom number tells you?"),
    ]
    _, reasons = scrub_rows(tmp_path, rows, language="ko")
    assert reasons == {"1": "wrong_language"}
    _, reasons = scrub_rows(tmp_path, rows, language="en")
    assert reasons == {"0": "wrong_language"}
    _, reasons = scrub_rows(tmp_path, rows, language="any")
    assert reasons == {}


def test_language_id_tells_apart_languages_that_share_a_script(tmp_path):
    """Spanish, French and German are Latin letters like English: the script rule cannot drop them,
    the language-ID model does. Short turns (too little text to identify) are judged by script."""
    rows = [
        conversation("How do I add fractions with different denominators?", "What could both denominators share?"),
        conversation("¿Cómo sumo fracciones con denominadores distintos?", "¿Qué denominador pueden compartir?"),
        conversation("Comment additionner des fractions différentes ?", "Quel dénominateur peuvent-elles partager ?"),
        conversation("Wie addiere ich Brüche mit verschiedenen Nennern?", "Welchen Nenner könnten beide teilen?"),
        conversation("ok thanks!", "Great, what next?"),
    ]
    _, reasons = scrub_rows(tmp_path, rows, language="en")
    assert reasons == {"1": "wrong_language", "2": "wrong_language", "3": "wrong_language"}
    _, reasons = scrub_rows(tmp_path, rows, language="es")
    assert set(reasons) == {"0", "2", "3"}
    korean = [conversation("몰라요", "어디서 막혔나요?"), conversation("알겠어요", "좋아요, 다음은 뭘까요?")]
    _, reasons = scrub_rows(tmp_path, korean, language="ko")
    assert reasons == {}


def test_near_duplicates(tmp_path):
    base = "What do you think happens to the water in a puddle on a hot sunny afternoon? Where could it go?"
    rows = [
        conversation("Where does rain come from?", base),
        conversation("Where does rain come from?", base.replace("hot", "warm")),  # near duplicate
        conversation("How do magnets work?", "What happens when you bring two north poles together?"),
    ]
    _, reasons = scrub_rows(tmp_path, rows)
    assert reasons == {"1": "near_duplicate"}
    _, reasons = scrub_rows(tmp_path, rows, near_dup_threshold=None)
    assert reasons == {}


def test_characters_are_partitioned_and_must_not_share_a_conversation(tmp_path):
    rows = [
        conversation("Hi!", "Hello, what shall we practice?", character_id="tutor"),
        conversation("Hi!", "Well met, traveler. What brings you here?", character_id="knight"),
    ]
    stats, _ = scrub_rows(tmp_path, rows, review_sample=5)
    assert set(stats["per_character"]) == {"tutor", "knight"}
    for char in ("tutor", "knight"):
        assert [r["character_id"] for r in read_jsonl(tmp_path / f"out/{char}/records.jsonl")] == [char]
        assert len(list(read_jsonl(tmp_path / f"out/{char}/review_sample.jsonl"))) == 1
    shared = [
        conversation("Hi!", "Hello, what shall we practice?", character_id="tutor"),
        conversation("Hi!", "Hello, what shall we practice?", character_id="knight"),
    ]
    with pytest.raises(scrub.CharacterConflict, match="appear under two characters"):
        scrub_rows(tmp_path, shared)


def drone(direction: str, distance: int, unit: str, call_id: str = "call_1", result: str = "ok") -> dict:
    """A tool-use conversation as collect writes OpenAI's fine-tuning shape: one system prompt and
    tool list for all of them, the user's request, the call, its result and the reply."""
    args = json.dumps({"direction": direction, "distance": distance, "unit": unit})
    return {
        "character_id": "tutor",
        "opt_in": True,
        "tools": [{"type": "function", "function": {"name": "move", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "You control a drone. Use the tools to move it as the user asks, exactly."},
            {"role": "user", "content": f"move {direction} by {distance} {unit}"},
            {
                "role": "assistant",
                "content": "",  # a turn that only calls (collect writes a missing content so)
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "move", "arguments": args}}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": result},
            {"role": "assistant", "content": f"Moved {direction} by {distance} {unit}."},
        ],
    }


def test_tool_conversations_that_differ_in_a_call_are_all_kept(tmp_path):
    """Near-identical words, other arguments: every conversation is its own example. The same
    conversation with other call ids is an exact duplicate; another result or tool list is not."""
    moves = [(d, n, u) for d in ("left", "right", "up", "down") for n in (10, 20) for u in ("units", "feet")]
    rows = [drone(*m) for m in moves]
    rows.append(drone("left", 10, "units", call_id="call_99"))  # the first again, other ids
    rows.append(drone("left", 10, "units", result="blocked by a wall"))  # another result
    other_tools = drone("left", 10, "units")
    other_tools["tools"] = other_tools["tools"] + [{"type": "function", "function": {"name": "land"}}]
    rows.append(other_tools)
    stats, reasons = scrub_rows(tmp_path, rows)
    assert reasons == {str(len(moves)): "exact_duplicate"}, reasons
    assert stats["kept"] == len(moves) + 2


def test_near_duplicates_ignore_a_shared_system_prompt(tmp_path):
    """A long system prompt every conversation shares does not make them near-duplicates."""
    system = {"role": "system", "content": "You are a patient tutor who always answers with a question. " * 8}
    rows = [
        {**conversation(q, a), "messages": [system, *conversation(q, a)["messages"]]}
        for q, a in (("What is 3/4?", "What does the 4 tell you?"), ("What is a verb?", "Can you name an action?"))
    ]
    _, reasons = scrub_rows(tmp_path, rows)
    assert reasons == {}
