import csv
import subprocess
import sys

import pytest
from conftest import write_lines

from loraloop.files import read_json
from loraloop.judge import ab


def samples(tag, n=6):
    return [
        {
            "prompt_id": f"p{i}",
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"question {i}"}],
            "response": f"{tag} answer {i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def ab_set(tmp_path):
    this = write_lines(tmp_path / "r2.jsonl", samples("new"))
    prev = write_lines(tmp_path / "r1.jsonl", samples("old"))
    n = ab.make("r2", this, "r1", prev, tmp_path / "ab.csv", tmp_path / "ab_key.json", n=5, seed=1)
    assert n == 5
    return tmp_path


def fill(path, choose):
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        r["preferred"] = choose(r)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ab.COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_blinded_and_shuffled(ab_set):
    rows = list(csv.DictReader((ab_set / "ab.csv").open()))
    assert len(rows) == 5 and all(r["preferred"] == "" for r in rows)
    assert all("sys" not in r["context"] and r["context"].startswith("user: question") for r in rows)
    sides = {r["response_a"].split()[0] for r in rows}
    assert sides == {"new", "old"}  # the new round is not always on one side
    key = read_json(ab_set / "ab_key.json")
    for r in rows:
        assert key["items"][r["item"]]["A"] == ("r2" if r["response_a"].startswith("new") else "r1")


def test_win_rate(ab_set):
    # The labeler always prefers the new round's answer, except one tie and one left blank.
    rows = list(csv.DictReader((ab_set / "ab.csv").open()))
    tie, blank = rows[0]["item"], rows[1]["item"]
    fill(
        ab_set / "ab.csv",
        lambda r: (
            "tie"
            if r["item"] == tie
            else ""
            if r["item"] == blank
            else ("A" if r["response_a"].startswith("new") else "B")
        ),
    )
    res = ab.score(ab_set / "ab.csv", ab_set / "ab_key.json")
    assert res == {
        "round": "r2",
        "vs": "r1",
        "labeled": 4,
        "unlabeled": 1,
        "wins": 3,
        "losses": 0,
        "ties": 1,
        "win_rate": pytest.approx(3.5 / 4),
    }


def test_bad_label_names_line_and_field(ab_set):
    fill(ab_set / "ab.csv", lambda r: "left")
    res = subprocess.run(
        [sys.executable, "-m", "loraloop.cli", "ab-score", str(ab_set / "ab.csv")], capture_output=True, text=True
    )
    assert res.returncode == 1 and "ab.csv:2: field preferred: 'left'" in res.stderr
