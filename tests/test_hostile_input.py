"""collect on hostile input: nothing in one record stops the run or loses the others, every row
read is kept or rejected with a reason, file and line; JSON arrays stream; UTF-16/32 decode."""

import io
import json
import subprocess
import sys

import pytest
from conftest import conversation, write_lines

from loraloop.data import collect, sources
from loraloop.files import read_json, read_jsonl
from loraloop.params import CollectParams, SourceParams

GOOD = conversation("What is 2+2?", "What do you get if you count on two from two?")


def collect_file(tmp_path, path, **source):
    counts = collect.run(CollectParams(sources=[SourceParams(path=str(path), **source)]), tmp_path / "out")
    assert counts["read"] == counts["kept"] + counts["rejected"]
    assert read_json(tmp_path / "out/counts.json") == counts
    kept = list(read_jsonl(tmp_path / "out/records.jsonl"))
    rejects = list(read_jsonl(tmp_path / "out/rejects.jsonl"))
    assert len(kept) == counts["kept"] and len(rejects) == counts["rejected"]
    return counts, kept, rejects


def deep(n: int):
    value = "bottom"
    for _ in range(n):
        value = {"x": value}
    return value


def test_hostile_lines_are_rejects_and_the_rest_is_kept(tmp_path):
    src = tmp_path / "raw.jsonl"
    lines = [
        json.dumps(GOOD),
        "[" * 10_000,  # 2: 10,000 nested [ (RecursionError in the JSON parser)
        json.dumps({**GOOD, "extra": deep(500)}),  # 3: a valid record with a 500-deep unknown field
        json.dumps(GOOD).replace("What is 2+2?", "What is \\ud800?"),  # 4: a lone surrogate escape
        json.dumps({**GOOD, "weight": 1e999}),  # 5: Infinity
        json.dumps({**GOOD, "weight": 10**400}),  # 6: an int no float can hold
        json.dumps(conversation("And 3+3?", "What do you get if you count on three?")),
    ]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts, kept, rejects = collect_file(tmp_path, src)
    assert counts["kept"] == 2 and counts["rejected"] == 5
    by_line = {r["line"]: (r["reason"], r["field"]) for r in rejects}
    assert by_line[2][0] in ("too_deeply_nested", "invalid_json")
    assert by_line[3] == ("too_deeply_nested", None)
    assert by_line[4] == ("invalid_unicode", "messages[0].content")
    assert by_line[5] == by_line[6] == ("bad_weight", "weight")
    assert all(r["source"] == str(src) for r in rejects)


def test_an_unforeseen_error_in_one_record_is_its_reject(tmp_path, monkeypatch):
    normalize = collect.normalize

    def flaky(obj, *args):
        if obj["messages"][0]["content"] == "boom":
            raise ZeroDivisionError("boom in the text, never printed")
        return normalize(obj, *args)

    monkeypatch.setattr(collect, "normalize", flaky)
    src = write_lines(tmp_path / "raw.jsonl", [GOOD, conversation("boom", "What makes it go boom?"), GOOD])
    counts, kept, rejects = collect_file(tmp_path, src)
    assert counts["kept"] == 2
    assert rejects == [
        {"reason": "unreadable_record", "field": None, "source": str(src), "line": 2, "detail": "ZeroDivisionError"}
    ]


def test_json_array_elements_stream_and_a_bad_one_loses_nothing_else(tmp_path):
    other = conversation("And 3+3?", "What do you get if you count on three?")
    text = (
        "[\n"
        + json.dumps(GOOD)
        + ",\n"
        + "[" * 3000
        + "]" * 3000
        + ",\n"  # 3: too deep for the parser, but its brackets close
        + '{"messages": [oops]},\n'  # 4: not JSON
        + json.dumps(GOOD).replace("What is 2+2?", "\\udfff")
        + ",\n"  # 5: lone surrogate
        + json.dumps(other)
        + "\n]\n"
    )
    arr = tmp_path / "raw.json"
    arr.write_text(text, encoding="utf-8")
    counts, kept, rejects = collect_file(tmp_path, arr)
    assert [r["messages"][0]["content"] for r in kept] == ["What is 2+2?", "And 3+3?"]
    assert [(r["line"], r["item"], r["reason"]) for r in rejects] == [
        (3, 2, "too_deeply_nested"),
        (4, 3, "invalid_json"),
        (5, 4, "invalid_unicode"),
    ]


def test_a_cut_off_array_keeps_what_came_before(tmp_path):
    arr = tmp_path / "raw.json"
    arr.write_text("[" + json.dumps(GOOD) + ", " + json.dumps(GOOD)[:40], encoding="utf-8")
    counts, kept, rejects = collect_file(tmp_path, arr)
    assert counts["kept"] == 1 and [r["reason"] for r in rejects] == ["invalid_json"]
    arr.write_text('{"messages": []}', encoding="utf-8")
    counts, _, rejects = collect_file(tmp_path, arr)
    assert (counts["read"], rejects[0]["reason"]) == (1, "not_a_json_array")


class CountingStream(io.StringIO):
    def __init__(self, text):
        super().__init__(text)
        self.chars_read = 0

    def read(self, n=-1):
        out = super().read(n)
        self.chars_read += len(out)
        return out


def test_a_json_array_is_read_an_element_at_a_time():
    """Constant memory: the first records come out after one chunk of a large array is read, and a
    long element (here 3 chunks) is read whole with the buffer growing to fit it."""
    elements = [{"n": i, "text": "x" * 100} for i in range(20_000)] + [{"long": "y" * 3000}]
    stream = CountingStream(json.dumps(elements))
    reader = sources.ArrayReader(stream, chunk=1024)
    rows = reader.elements()
    first = [next(rows)[1] for _ in range(3)]
    assert [e["n"] for e in first] == [0, 1, 2]
    assert stream.chars_read <= 1024 and len(stream.getvalue()) > 2_000_000
    rest = [value for _, value in rows]
    assert len(rest) == 20_001 - 3 and rest[-1] == {"long": "y" * 3000}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_byte_order_marked_files_are_decoded(tmp_path, encoding):
    korean = conversation("2 더하기 2는 뭐예요?", "2에서 두 칸 더 세면 몇이 될까요?")
    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")  # Python writes a BOM for utf-16, utf-32, utf-8-sig
    lines = tmp_path / "raw.jsonl"
    lines.write_text(bom + json.dumps(GOOD) + "\n\n" + json.dumps(korean, ensure_ascii=False) + "\n", encoding=encoding)
    counts, kept, _ = collect_file(tmp_path, lines)
    assert counts["kept"] == 2 and kept[1]["messages"][0]["content"] == "2 더하기 2는 뭐예요?"
    arr = tmp_path / "raw.json"
    arr.write_text(bom + json.dumps([GOOD, korean], ensure_ascii=False), encoding=encoding)
    counts, kept, _ = collect_file(tmp_path, arr)
    assert counts["kept"] == 2 and kept[1]["messages"][1]["content"] == "2에서 두 칸 더 세면 몇이 될까요?"


def test_utf16_without_a_bom_is_one_reject_that_says_so(tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-16-le")
    counts, kept, rejects = collect_file(tmp_path, src)
    assert (counts["read"], counts["kept"]) == (1, 0)
    assert rejects[0]["reason"] == "unknown_encoding" and "UTF-16" in rejects[0]["detail"]


def test_invalid_utf16_part_way_ends_the_file_with_one_reject(tmp_path):
    src = tmp_path / "raw.jsonl"
    good = (json.dumps(GOOD) + "\n").encode("utf-16-le")
    src.write_bytes(b"\xff\xfe" + good + b"\x00\xd8\x41\x00" + good)  # a lone high surrogate
    counts, kept, rejects = collect_file(tmp_path, src)
    assert counts["kept"] == 1 and [r["reason"] for r in rejects] == ["invalid_encoding"]
    assert "utf-16-le" in rejects[0]["detail"]


def test_a_missing_source_is_named_by_its_path(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "collect",
            "--source",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and f"{tmp_path / 'nope.jsonl'} does not exist" in res.stderr
    assert "params.yaml" not in res.stderr and "Traceback" not in res.stderr
