import json

from conftest import conversation, write_lines

from stages import collect
from stages.io import read_json, read_jsonl
from stages.params import CollectParams, SourceParams


def run_on(tmp_path, lines, default_character_id=None):
    src = write_lines(tmp_path / "raw.jsonl", lines)
    params = CollectParams(sources=[SourceParams(path=str(src), dataset_source="logs")],
                           default_character_id=default_character_id)
    counts = collect.run(params, tmp_path / "out")
    return counts, list(read_jsonl(tmp_path / "out/records.jsonl")), list(read_jsonl(tmp_path / "out/rejects.jsonl"))


def test_every_line_is_kept_or_rejected_with_reason_and_line(tmp_path):
    good = conversation("What is 2+2?", "What do you get if you count two more from two?")
    lines = [
        good,
        '{"messages": [',                                                     # 2 invalid_json
        "",                                                                   # blank: not a record
        ["a", "list"],                                                        # 4 not_an_object
        {"character_id": "tutor", "opt_in": True},                           # 5 missing_messages
        {**good, "messages": "hi"},                                           # 6 messages_not_a_list
        {**good, "messages": [{"role": "bot", "content": "x"}]},              # 7 unknown_role
        {**good, "messages": [{"role": "user", "content": 3}]},               # 8 content_not_a_string
        {**good, "messages": [{"role": "user", "content": "  "}]},            # 9 empty_content
        {**good, "messages": [{"role": "assistant", "content": "hello"}]},    # 10 no_user_turn
        {**good, "messages": [{"role": "user", "content": "hello"}]},         # 11 no_assistant_turn
        {k: v for k, v in good.items() if k != "character_id"},              # 12 missing_character_id
        {**good, "opt_in": False},                                            # 13 no_opt_in
        {k: v for k, v in good.items() if k != "opt_in"},                     # 14 no_opt_in
    ]
    counts, kept, rejects = run_on(tmp_path, lines)
    assert counts["read"] == 13 and counts["kept"] == 1 and counts["rejected"] == 12
    by_line = {r["line"]: r["reason"] for r in rejects}
    assert by_line == {
        2: "invalid_json", 4: "not_an_object", 5: "missing_messages", 6: "messages_not_a_list",
        7: "unknown_role", 8: "content_not_a_string", 9: "empty_content", 10: "no_user_turn",
        11: "no_assistant_turn", 12: "missing_character_id", 13: "no_opt_in", 14: "no_opt_in",
    }
    assert all(r["source"].endswith("raw.jsonl") for r in rejects)
    assert next(r for r in rejects if r["line"] == 7)["field"] == "messages[0].role"
    assert read_json(tmp_path / "out/counts.json")["reasons"]["no_opt_in"] == 2


def test_invalid_utf8_is_rejected_not_fatal(tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_bytes(b'{"messages": "\xff\xfe"}\n' + json.dumps(conversation("hi there", "what do you think?")).encode() + b"\n")
    params = CollectParams(sources=[SourceParams(path=str(src), dataset_source="logs")])
    counts = collect.run(params, tmp_path / "out")
    assert counts["reasons"] == {"invalid_utf8": 1} and counts["kept"] == 1


def test_default_character_and_stable_ids(tmp_path):
    rec = {k: v for k, v in conversation("Hello  there", "What would you like to learn?").items() if k != "character_id"}
    counts, kept, _ = run_on(tmp_path, [rec], default_character_id="tutor")
    assert counts["kept"] == 1 and kept[0]["character_id"] == "tutor"
    # Whitespace differences do not change the content address.
    again = collect.record_id("tutor", [{"role": "user", "content": "Hello there"},
                                        {"role": "assistant", "content": "What would you like to learn?"}])
    assert kept[0]["id"] == again
    assert kept[0]["dataset_source"] == "logs" and kept[0]["weight"] == 1.0
