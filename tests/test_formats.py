"""Every common chat-data shape through collect -> scrub -> version: well-formed records become
conversations (or DPO pairs), malformed ones are rejects naming reason, field, source and line."""

import json

import pytest
from conftest import write_lines

from loraloop.data import collect, formats, scrub, version
from loraloop.files import read_json, read_jsonl
from loraloop.params import CollectParams, ScrubParams, SourceParams, VersionParams

Q1, A1 = "How do I add 3/4 and 1/8?", "What denominator could both fractions share?"
Q2, A2 = "Is it 8?", "Yes! Now rewrite 3/4 with eighths: what do you get?"

WELL_FORMED = {
    "openai": [
        {
            "messages": [
                {"role": "system", "content": "Be a patient tutor."},
                {"role": "user", "content": Q1},
                {"role": "assistant", "content": A1},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": Q1}]},
                {"role": "assistant", "content": A1, "weight": 0},
                {"role": "user", "content": Q2, "name": "jo"},
                {"role": "assistant", "content": A2, "weight": 1},
            ]
        },
        {"prompt": Q2, "completion": A2},  # (Q1/A1 again would be a near-duplicate of the first)
    ],
    "sharegpt": [
        {"conversations": [{"from": "human", "value": Q1}, {"from": "gpt", "value": A1}], "system": "Be patient."},
        {
            "conversations": [
                {"from": "Human", "value": Q1},
                {"from": "MODEL", "value": A1},
                {"from": "user", "value": Q2},
                {"from": "assistant", "value": A2},
            ]
        },
    ],
    "alpaca": [
        {"instruction": "Add the fractions.", "input": "3/4 + 1/8", "output": "What denominator do they share?"},
        {"instruction": Q2, "input": "", "output": A2, "system": "Be patient.", "history": [[Q1, A1]]},
    ],
    "preference": [
        {"prompt": Q1, "chosen": A1, "rejected": "It is 7/8. Memorize it."},
        {
            "prompt": [{"role": "user", "content": Q2}],
            "chosen": [{"role": "assistant", "content": A2}],
            "rejected": [{"role": "assistant", "content": "No, it is nine."}],
        },
        {
            "chosen": [{"role": "user", "content": "What is 2/3 of 9?"}, {"role": "assistant", "content": A1}],
            "rejected": [
                {"role": "user", "content": "What is 2/3 of 9?"},
                {"role": "assistant", "content": "6, obviously."},
            ],
        },
        {
            "conversations": [{"from": "human", "value": "Why is the sky blue?"}],
            "chosen": {"from": "gpt", "value": "What happens to sunlight in air?"},
            "rejected": {"from": "gpt", "value": "Physics."},
        },
    ],
    "hh": [
        {"chosen": f"\n\nHuman: {Q1}\n\nAssistant: {A1}", "rejected": f"\n\nHuman: {Q1}\n\nAssistant: 7/8. Next."},
        {
            "chosen": f"\n\nHuman: {Q1}\n\nAssistant: {A1}\n\nHuman: {Q2}\n\nAssistant: {A2}",
            "rejected": f"\n\nHuman: {Q1}\n\nAssistant: {A1}\n\nHuman: {Q2}\n\nAssistant: Whatever.",
        },
    ],
}

MALFORMED = {
    "openai": [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                    {"role": "assistant", "content": A1},
                ]
            },
            "non_text_content",
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1, "weight": 0.5}]},
            "bad_message_weight",
            "messages[1].weight",
        ),
        ({"messages": [{"role": "narrator", "content": Q1}]}, "unknown_role", "messages[0].role"),
    ],
    "sharegpt": [
        ({"conversations": [{"from": "alien", "value": Q1}]}, "unknown_role", "conversations[0].from"),
        ({"conversations": "hi"}, "messages_not_a_list", "conversations"),
    ],
    "alpaca": [
        ({"instruction": Q1}, "missing_output", "output"),
        ({"instruction": Q1, "output": A1, "history": [[Q1]]}, "bad_history_turn", "history[0]"),
    ],
    "preference": [
        ({"prompt": Q1, "chosen": A1}, "missing_pair", "rejected"),
        ({"prompt": Q1, "chosen": A1, "rejected": A1}, "chosen_equals_rejected", "rejected"),
        (
            {
                "chosen": [
                    {"role": "user", "content": Q1},
                    {"role": "assistant", "content": A1},
                    {"role": "user", "content": Q2},
                    {"role": "assistant", "content": A2},
                ],
                "rejected": [{"role": "user", "content": "Other question"}, {"role": "assistant", "content": "x"}],
            },
            "preference_tail_not_one_reply",
            "chosen",
        ),
    ],
    "hh": [
        ({"chosen": "Assistant: hi", "rejected": f"\n\nHuman: {Q1}\n\nAssistant: no"}, "bad_transcript", "chosen"),
    ],
}


def run_collect(tmp_path, rows, fmt="auto"):
    src = write_lines(tmp_path / "raw.jsonl", rows)
    params = CollectParams(
        sources=[SourceParams(path=str(src), format=fmt, character_id="tutor", require_opt_in=False)]
    )
    counts = collect.run(params, tmp_path / "collected")
    assert counts["read"] == counts["kept"] + counts["rejected"] == len(rows)
    return (
        counts,
        list(read_jsonl(tmp_path / "collected/records.jsonl")),
        list(read_jsonl(tmp_path / "collected/rejects.jsonl")),
    )


@pytest.mark.parametrize("fmt", sorted(WELL_FORMED))
@pytest.mark.parametrize("declared", [False, True], ids=["auto", "declared"])
def test_well_formed_records_round_trip_to_the_version(tmp_path, fmt, declared):
    rows = WELL_FORMED[fmt]
    counts, kept, rejects = run_collect(tmp_path, rows, fmt if declared else "auto")
    assert not rejects and counts["kept"] == len(rows)
    assert counts["per_source"][str(tmp_path / "raw.jsonl")]["shape." + fmt] == len(rows)
    for r in kept:
        assert r["shape"] == fmt and r["messages"][-1]["role"] == "assistant"
        assert {m["role"] for m in r["messages"]} <= {"system", "user", "assistant", "tool"}
    scrub.run(
        ScrubParams(min_assistant_chars=2),
        tmp_path / "collected/records.jsonl",
        tmp_path / "scrubbed",
        tmp_path / "data.json",
    )
    manifest = version.run(VersionParams(), tmp_path / "scrubbed", tmp_path / "version")
    splits = manifest["records"]
    if fmt in ("preference", "hh"):
        # Pairs go to the dpo split only, the chosen reply after the shared prompt.
        assert splits == {"tutor/dpo.jsonl": len(rows)}
        for pair in read_jsonl(tmp_path / "version/splits/tutor/dpo.jsonl"):
            assert pair["prompt"][-1]["role"] == "user" and pair["chosen"] != pair["rejected"]
    else:
        assert "tutor/dpo.jsonl" not in splits and sum(splits.values()) == len(rows)


def test_what_each_shape_means():
    shape = lambda obj: formats.shape(obj, "auto", 10_000)  # noqa: E731
    alpaca = shape(WELL_FORMED["alpaca"][0])
    assert alpaca.messages[0]["content"] == "Add the fractions.\n\n3/4 + 1/8"
    history = shape(WELL_FORMED["alpaca"][1]).messages
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    weighted = shape(WELL_FORMED["openai"][1]).messages
    assert weighted[1].get("weight") == 0 and "weight" not in weighted[3] and weighted[2]["name"] == "jo"
    assert weighted[0]["content"] == Q1
    implicit = shape(WELL_FORMED["preference"][2])
    assert [m["content"] for m in implicit.messages] == [
        "What is 2/3 of 9?",
        A1,
    ] and implicit.rejected == "6, obviously."
    hh = shape(WELL_FORMED["hh"][1])
    assert [m["content"] for m in hh.messages] == [Q1, A1, Q2, A2] and hh.rejected == "Whatever."
    sharegpt = shape(WELL_FORMED["sharegpt"][0]).messages
    assert sharegpt[0] == {"role": "system", "content": "Be patient."}


@pytest.mark.parametrize("fmt", sorted(MALFORMED))
def test_malformed_records_are_rejects_with_reason_field_and_line(tmp_path, fmt):
    good = WELL_FORMED[fmt][0]
    rows = [good] + [row for row, _, _ in MALFORMED[fmt]]
    counts, kept, rejects = run_collect(tmp_path, rows, fmt)
    assert counts["kept"] == 1
    assert [(r["line"], r["reason"], r["field"]) for r in rejects] == [
        (i, reason, field) for i, (_, reason, field) in enumerate(MALFORMED[fmt], 2)
    ]


def test_kto_labels_read_like_feedback_and_unknown_fields_are_kept_under_meta(tmp_path):
    """label true keeps the conversation; label false keeps it as a negative (the reply not to
    give, at weight 0, the rejected side an on-policy answer is paired against), as a feedback
    source's `bad` without a correction is."""
    rows = [
        {"prompt": Q1, "completion": A1, "label": True, "quality": 4, "annotator": {"team": "b"}},
        {"prompt": Q1, "completion": "7/8.", "label": False},
        {"prompt": Q1, "completion": A1, "label": "yes"},
    ]
    counts, kept, rejects = run_collect(tmp_path, rows)
    assert counts["kept"] == 2 and kept[0]["meta"] == {"quality": 4, "annotator": {"team": "b"}}
    negative = kept[1]
    assert negative["negative_only"] and negative["rejected"] == "7/8." and negative["messages"][-1]["weight"] == 0
    assert [(r["reason"], r["field"]) for r in rejects] == [("bad_feedback_label", "label")]
    scrub.run(
        ScrubParams(min_assistant_chars=2), tmp_path / "collected/records.jsonl", tmp_path / "s", tmp_path / "d.json"
    )
    manifest = version.run(VersionParams(), tmp_path / "s", tmp_path / "v")
    assert manifest["records"].get("tutor/negatives.jsonl") == 1


def test_multimodal_records_are_refused_naming_their_media_field(tmp_path):
    """LLaVA / LLaMA-Factory rows carry their media beside the text (`<image>` in it): a
    non_text_content reject naming the field, as an OpenAI image part is."""
    rows = [
        {"messages": [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant", "content": A1}],
         "images": ["cat.jpg"]},
        {"conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": A1}],
         "image": "coco/0001.jpg"},
        {"messages": [{"role": "user", "content": "<video>Summarize."}, {"role": "assistant", "content": A1}],
         "videos": ["clip.mp4"]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                      {"role": "assistant", "content": A1}]},
    ]  # fmt: skip
    counts, kept, rejects = run_collect(tmp_path, rows)
    assert counts["kept"] == 0
    assert [(r["reason"], r["field"]) for r in rejects] == [
        ("non_text_content", "images"),
        ("non_text_content", "image"),
        ("non_text_content", "videos"),
        ("non_text_content", "messages[0].content[0]"),
    ]


def test_text_parts_written_with_value_and_a_sources_row_id(tmp_path):
    rows = [
        {"id": "row-17", "messages": [{"role": "user", "content": [{"type": "text", "value": Q1}]},
                                      {"role": "assistant", "content": A1}]},
        {"conversation_id": 42,
         "conversation": [{"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]},
    ]  # fmt: skip
    counts, kept, rejects = run_collect(tmp_path, rows)
    assert not rejects and kept[0]["messages"][0]["content"] == Q1
    assert [r["source_id"] for r in kept] == ["row-17", "42"]


def test_a_source_rejected_whole_for_a_reason_an_option_fixes_says_which(tmp_path):
    turns = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    src = write_lines(tmp_path / "public.jsonl", [{"messages": turns}] * 3)
    counts = collect.run(CollectParams(sources=[SourceParams(path=str(src), require_opt_in=False)]), tmp_path / "o")
    assert counts["kept"] == 0 and len(counts["hints"]) == 1
    assert "missing_character_id" in counts["hints"][0] and "character_id:" in counts["hints"][0]
    assert "--character-id" in counts["hints"][0]
    counts = collect.run(CollectParams(sources=[SourceParams(path=str(src), character_id="t")]), tmp_path / "o")
    assert "require_opt_in: false" in counts["hints"][0]
    ok = collect.run(
        CollectParams(sources=[SourceParams(path=str(src), character_id="t", require_opt_in=False)]), tmp_path / "o"
    )
    assert ok["kept"] == 3 and ok["hints"] == []


def test_the_cli_takes_a_format(tmp_path):
    import subprocess
    import sys

    src = write_lines(tmp_path / "alpaca.jsonl", WELL_FORMED["alpaca"] + [WELL_FORMED["openai"][0]])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "collect",
            "--source",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--kind",
            "anchor",
            "--character-id",
            "tutor",
            "--no-opt-in-required",
            "--format",
            "alpaca",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    counts = read_json(tmp_path / "out/counts.json")
    # Declared alpaca: the OpenAI record is not read as alpaca, it is a reject that says so.
    assert (counts["kept"], counts["reasons"]) == (2, {"missing_instruction": 1})
    assert json.loads(res.stdout)["kept"] == 2
