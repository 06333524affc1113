import json
import subprocess
import sys

import pytest
from conftest import conversation, write_lines

from loraloop.data import collect
from loraloop.files import read_json, read_jsonl
from loraloop.params import CollectParams, SourceParams


def run_on(tmp_path, lines, default_character_id=None):
    src = write_lines(tmp_path / "raw.jsonl", lines)
    params = CollectParams(
        sources=[SourceParams(path=str(src), dataset_source="logs")], default_character_id=default_character_id
    )
    counts = collect.run(params, tmp_path / "out")
    return counts, list(read_jsonl(tmp_path / "out/records.jsonl")), list(read_jsonl(tmp_path / "out/rejects.jsonl"))


def test_every_line_is_kept_or_rejected_with_reason_and_line(tmp_path):
    good = conversation("What is 2+2?", "What do you get if you count two more from two?")
    lines = [
        good,
        '{"messages": [',  # 2 invalid_json
        "",  # blank: not a record
        ["a", "list"],  # 4 not_an_object
        {"character_id": "tutor", "opt_in": True},  # 5 missing_messages
        {**good, "messages": "hi"},  # 6 messages_not_a_list
        {**good, "messages": [{"role": "bot", "content": "x"}]},  # 7 unknown_role
        {**good, "messages": [{"role": "user", "content": 3}]},  # 8 content_not_a_string
        {**good, "messages": [{"role": "user", "content": "  "}]},  # 9 empty_content
        {**good, "messages": [{"role": "assistant", "content": "hello"}]},  # 10 no_user_turn
        {**good, "messages": [{"role": "user", "content": "hello"}]},  # 11 no_assistant_turn
        {k: v for k, v in good.items() if k != "character_id"},  # 12 missing_character_id
        {**good, "opt_in": False},  # 13 no_opt_in
        {k: v for k, v in good.items() if k != "opt_in"},  # 14 no_opt_in
    ]
    counts, kept, rejects = run_on(tmp_path, lines)
    assert counts["read"] == 13 and counts["kept"] == 1 and counts["rejected"] == 12
    by_line = {r["line"]: r["reason"] for r in rejects}
    assert by_line == {
        2: "invalid_json",
        4: "not_an_object",
        5: "missing_messages",
        6: "messages_not_a_list",
        7: "unknown_role",
        8: "content_not_a_string",
        9: "empty_content",
        10: "no_user_turn",
        11: "no_assistant_turn",
        12: "missing_character_id",
        13: "no_opt_in",
        14: "no_opt_in",
    }
    assert all(r["source"].endswith("raw.jsonl") for r in rejects)
    assert next(r for r in rejects if r["line"] == 7)["field"] == "messages[0].role"
    assert read_json(tmp_path / "out/counts.json")["reasons"]["no_opt_in"] == 2


def test_invalid_utf8_is_rejected_not_fatal(tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_bytes(
        b'{"messages": "\xff\xfe"}\n' + json.dumps(conversation("hi there", "what do you think?")).encode() + b"\n"
    )
    params = CollectParams(sources=[SourceParams(path=str(src), dataset_source="logs")])
    counts = collect.run(params, tmp_path / "out")
    assert counts["reasons"] == {"invalid_utf8": 1} and counts["kept"] == 1


def test_default_character_and_stable_ids(tmp_path):
    rec = {
        k: v for k, v in conversation("Hello  there", "What would you like to learn?").items() if k != "character_id"
    }
    counts, kept, _ = run_on(tmp_path, [rec], default_character_id="tutor")
    assert counts["kept"] == 1 and kept[0]["character_id"] == "tutor"
    # Whitespace differences do not change the content address.
    again = collect.record_id(
        "tutor",
        [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "What would you like to learn?"}],
    )
    assert kept[0]["id"] == again
    assert kept[0]["dataset_source"] == "logs" and kept[0]["weight"] == 1.0


def src_params(path, **kw):
    return CollectParams(sources=[SourceParams(path=str(path), **kw)])


def test_message_too_long_and_json_array_source(tmp_path):
    good = conversation("What is 2+2?", "What do you get counting two more?")
    long = conversation("x" * 40, "What do you think?")
    arr = tmp_path / "raw.json"
    arr.write_text(json.dumps([good, long, "nope"], indent=1))
    params = CollectParams(sources=[SourceParams(path=str(arr))], max_message_chars=36)
    counts = collect.run(params, tmp_path / "out")
    rejects = list(read_jsonl(tmp_path / "out/rejects.jsonl"))
    assert counts["kept"] == 1
    # line: where the element starts in the file; item: its place in the array.
    starts = [i for i, text in enumerate(arr.read_text().splitlines(), 1) if text in (" {", ' "nope"')]
    assert [(r["line"], r["item"], r["reason"], r["field"]) for r in rejects] == [
        (starts[1], 2, "message_too_long", "messages[0].content"),
        (starts[2], 3, "not_an_object", None),
    ]


def test_mongodb_export(tmp_path):
    row = {
        "_id": {"$oid": "65f0c0ffee"},
        "timestamp": {"$date": {"$numberLong": "1759320000000"}},
        "weight": {"$numberDouble": "0.5"},
        **conversation("hello there", "What would you like to learn?"),
    }
    src = write_lines(tmp_path / "mongo.jsonl", [row])
    collect.run(src_params(src), tmp_path / "out")
    rec = next(read_jsonl(tmp_path / "out/records.jsonl"))
    assert rec["source_id"] == "65f0c0ffee" and rec["timestamp"] == "2025-10-01T12:00:00Z" and rec["weight"] == 0.5


def test_feedback_becomes_sft_records_and_dpo_pairs(tmp_path):
    ctx = [{"role": "user", "content": "What is 6 times 7?"}]
    base = {"character_id": "tutor", "opt_in": True, "messages": ctx}
    rows = [
        {**base, "feedback": "good", "response": "What is 6 times 5, and what is left?"},
        {**base, "feedback": "bad", "response": "It is 42.", "corrected": "What is 6 times 6? Add one more 6?"},
        {**base, "feedback": "bad", "response": "It is 42."},
        {**base, "feedback": "meh", "response": "It is 42."},
    ]
    counts = collect.run(src_params(write_lines(tmp_path / "fb.jsonl", rows), kind="feedback"), tmp_path / "out")
    kept = list(read_jsonl(tmp_path / "out/records.jsonl"))
    assert counts["reasons"] == {"bad_feedback_label": 1}
    assert kept[0]["messages"][-1]["content"].startswith("What is 6 times 5") and "rejected" not in kept[0]
    assert kept[1]["messages"][-1]["content"].startswith("What is 6 times 6") and kept[1]["rejected"] == "It is 42."
    # A bad reply without a correction is a negative: kept at weight 0, the rejected side to come.
    assert kept[2]["negative_only"] and kept[2]["rejected"] == "It is 42."
    assert kept[2]["messages"][-1] == {"role": "assistant", "content": "It is 42.", "weight": 0}


@pytest.mark.parametrize(
    "row,expected_user",
    [
        (
            {
                "conversation_id": "c1",
                "conversation": [{"role": "user", "content": "hi lmsys"}, {"role": "assistant", "content": "hello!"}],
            },
            "hi lmsys",
        ),
        ({"instruction": "hi magpie", "response": "hello!"}, "hi magpie"),
        (
            {"conversations": [{"from": "human", "value": "hi sharegpt"}, {"from": "gpt", "value": "hello!"}]},
            "hi sharegpt",
        ),
        ({"context": "hi prosocial", "response": "hello!", "dialogue_id": 3, "response_id": 0}, "hi prosocial"),
    ],
)
def test_anchor_shapes_map_to_messages(tmp_path, row, expected_user):
    src = write_lines(tmp_path / "anchor.jsonl", [row])
    counts = collect.run(src_params(src, kind="anchor", character_id="tutor", require_opt_in=False), tmp_path / "out")
    assert counts["kept"] == 1, counts
    rec = next(read_jsonl(tmp_path / "out/records.jsonl"))
    assert rec["messages"][0] == {"role": "user", "content": expected_user} and rec["kind"] == "anchor"


def test_anchor_parquet_and_datasets_dir(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [{"instruction": f"question {i}", "response": f"What do you think about {i}?"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "anchor.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "anchor_ds"))
    for path in (tmp_path / "anchor.parquet", tmp_path / "anchor_ds"):
        counts = collect.run(
            src_params(path, kind="anchor", format="magpie", character_id="tutor", require_opt_in=False),
            tmp_path / "out",
        )
        assert counts["kept"] == 5 and counts["read"] == 5, path


def test_deletion_requests_remove_records_by_user_or_record_id(tmp_path):
    a = {**conversation("hi from a", "What shall we learn?"), "user_id": "u-a"}
    b = {**conversation("hi from b", "What shall we learn?"), "user_id": "u-b"}
    c = conversation("hi from c", "What shall we learn?")
    c_id = collect.record_id("tutor", c["messages"])
    dels = tmp_path / "deletions.txt"
    dels.write_text(f"# requests\nu-a\n{c_id}  # by record id\n")
    params = CollectParams(
        sources=[SourceParams(path=str(write_lines(tmp_path / "raw.jsonl", [a, b, c])))], deletions=[str(dels)]
    )
    counts = collect.run(params, tmp_path / "out")
    assert counts["kept"] == 1 and counts["reasons"] == {"deleted_on_request": 2}
    kept = next(read_jsonl(tmp_path / "out/records.jsonl"))
    assert (
        kept["messages"][0]["content"] == "hi from b" and kept["user_ref"] and "u-b" not in json.dumps(kept["user_ref"])
    )


def test_standalone_collect_cli(tmp_path):
    src = write_lines(tmp_path / "one.jsonl", [conversation("hi there", "What shall we learn?"), "{bad", ""])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "--params",
            str(tmp_path / "absent.yaml"),
            "collect",
            "--source",
            str(src),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    counts = read_json(tmp_path / "out/counts.json")
    assert (counts["read"], counts["kept"], counts["rejected"], counts["reasons"]) == (2, 1, 1, {"invalid_json": 1})
    assert next(read_jsonl(tmp_path / "out/rejects.jsonl")) == {
        "reason": "invalid_json",
        "field": None,
        "source": str(src),
        "line": 2,
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "collect",
            "--source",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "o2"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "missing.jsonl" in res.stderr and "does not exist" in res.stderr
