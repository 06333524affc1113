"""loraloop monitor on serve logs written the way the server writes them (loraloop/serve/logs.py)."""

import datetime as dt
import json
from pathlib import Path

import pytest

from loraloop.files import read_json, read_jsonl, write_json
from loraloop.params import Gate, MonitorParams
from loraloop.serve import monitor
from loraloop.serve.logs import COUNTERS, FEEDBACK, NEGATIVES, SERVED, DailyLog, stamp

DAY = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)


def exchange(log, i, version, reply, rules, opt_in=True, latency=100.0, character="tutor"):
    when = DAY + dt.timedelta(minutes=i)
    rid = f"chatcmpl-{i}"
    log.append(
        COUNTERS,
        {
            "event": "completion",
            "response_id": rid,
            "timestamp": stamp(when),
            "route": character,
            "release": character,
            "lineage": character,
            "character": character,
            "version": version,
            "rollout": "stable",
            "opt_in": opt_in,
            "latency_ms": latency,
            "reply_chars": len(reply),
            "prompt_tokens": 40,
            "completion_tokens": 10,
            "rules": rules,
        },
        when,
    )
    if opt_in:
        msgs = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": reply}]
        log.append(
            SERVED,
            {
                "response_id": rid,
                "character_id": character,
                "timestamp": stamp(when),
                "opt_in": True,
                "user_id": f"u{i}",
                "messages": msgs,
                "version": version,
            },
            when,
        )
    return rid


def react(log, rid, version, reaction, corrected=None, opt_in=True, i=0):
    when = DAY + dt.timedelta(minutes=100 + i)
    row = {"event": "feedback", "response_id": rid, "timestamp": stamp(when), "route": "tutor"}
    row.update(character="tutor", version=version, opt_in=opt_in, reaction=reaction, corrected=corrected is not None)
    log.append(COUNTERS, row, when)
    if opt_in and corrected:
        log.append(FEEDBACK, {"response_id": rid, "corrected": corrected, "feedback": "bad"}, when)


OK = {"banned_words": 1.0, "repetition": 1.0, "meta_leakage": 1.0, "language": 1.0}


@pytest.fixture
def logs(tmp_path):
    log = DailyLog(tmp_path)
    rids = [exchange(log, i, "tutor-v0.1", "What do you think comes next?", OK, latency=100 + i) for i in range(20)]
    banned = exchange(log, 20, "tutor-v0.2", "The answer is 4.", {**OK, "banned_words": 0.0})
    private = exchange(log, 21, "tutor-v0.2", "As an AI I cannot.", {**OK, "meta_leakage": 0.0}, opt_in=False)
    loop = exchange(log, 22, "tutor-v0.2", "go go go go go go", {**OK, "repetition": 0.2})
    react(log, rids[0], "tutor-v0.1", "up", i=0)
    react(log, rids[1], "tutor-v0.1", "down", corrected="What is 2 and 2 together?", i=1)
    react(log, banned, "tutor-v0.2", "down", i=2)
    routing = {
        "tutor": {
            "release": "tutor",
            "stable": {"version": "tutor-v0.1", "adapter": "x"},
            "canary": {"version": "tutor-v0.2", "adapter": "y"},
            "canary_share": 0.1,
        }
    }
    write_json(tmp_path / "models/routing.json", routing)
    return tmp_path, rids, banned, private, loop


def run(root: Path, **mp):
    params = MonitorParams(**mp)
    return monitor.run(params, root, root / "models/routing.json", root / "monitor/monitor.json", root / "plots")


def test_metrics_per_character_and_version(logs):
    root, *_ = logs
    report = run(root, min_requests=2)
    v1, v2 = report["characters"]["tutor"]["tutor-v0.1"], report["characters"]["tutor"]["tutor-v0.2"]
    assert v1["requests"] == 20 and v2["requests"] == 3
    assert v1["latency_p50_ms"] == 109 and v1["latency_p95_ms"] == 118  # nearest rank over 100..119
    assert v1["thumbs_up"] == 1 and v1["thumbs_down"] == 1 and v1["thumbs_up_share"] == 0.5
    assert v2["banned_word_rate"] == pytest.approx(1 / 3) and v2["meta_leak_rate"] == pytest.approx(1 / 3)
    assert v2["repetition_rate"] == pytest.approx(0.8 / 3) and v1["banned_word_rate"] == 0.0
    assert v1["prompt_tokens"] == 800 and v1["completion_tokens"] == 200
    assert v1["rollout"] == "stable" and v2["rollout"] == "canary"
    assert read_json(root / "monitor/monitor.json") == json.loads(json.dumps(report))
    assert (root / "plots/tutor.csv").read_text().startswith("day,version,requests")
    assert (root / "plots/tutor_latency.svg").read_text().lstrip().startswith("<svg")


def test_alerts_mark_a_version_unhealthy_with_its_rollback(logs):
    root, *_ = logs
    report = run(root, min_requests=3, alerts={"banned_word_rate": Gate(max=0.05), "thumbs_up_share": Gate(min=0.2)})
    (bad,) = report["unhealthy"]
    assert bad["version"] == "tutor-v0.2" and bad["rollout"] == "canary"
    assert {a["metric"] for a in bad["alerts"]} == {"banned_word_rate", "thumbs_up_share"}
    assert bad["rollback"] == "loraloop release rollback tutor"
    assert report["characters"]["tutor"]["tutor-v0.1"]["healthy"]
    # too few requests to judge
    assert run(root, min_requests=4, alerts={"banned_word_rate": Gate(max=0.05)})["unhealthy"] == []
    with pytest.raises(KeyError, match="monitor.alerts"):
        run(root, min_requests=1, alerts={"latency_p99": Gate(max=1)})


def test_problem_replies_become_negatives_once(logs):
    root, rids, banned, private, loop = logs
    report = run(root)
    rows = list(read_jsonl(root / NEGATIVES / "monitor.jsonl"))
    by_id = {r["response_id"]: r for r in rows}
    assert set(by_id) == {rids[1], banned, loop}  # the private one has no text to keep
    assert by_id[rids[1]]["problems"] == ["thumbs_down"] and by_id[rids[1]]["corrected"] == "What is 2 and 2 together?"
    assert by_id[banned]["problems"] == ["banned_words", "thumbs_down"] and "corrected" not in by_id[banned]
    assert by_id[loop]["problems"] == ["repetition"]
    assert all(r["feedback"] == "bad" and r["messages"][-1]["role"] == "user" for r in rows)
    assert report["negatives"]["records"] == 3 and report["negatives"]["with_correction"] == 1
    first = (root / NEGATIVES / "monitor.jsonl").read_bytes()
    run(root)
    assert (root / NEGATIVES / "monitor.jsonl").read_bytes() == first  # rebuilt, not appended


def test_collect_reads_the_negatives(logs, tmp_path):
    from loraloop.data import collect
    from loraloop.params import CollectParams, SourceParams

    root, *_ = logs
    run(root)
    counts = collect.run(
        CollectParams(sources=[SourceParams(path=str(root / NEGATIVES), kind="feedback")]), tmp_path / "c"
    )
    assert counts["read"] == counts["kept"] == 3
    kept = list(read_jsonl(tmp_path / "c/records.jsonl"))
    assert sum(bool(r.get("negative_only")) for r in kept) == 2  # the two without a correction


def test_a_cut_line_is_reported_not_fatal(logs):
    root, *_ = logs
    path = next((root / COUNTERS).glob("*.jsonl"))
    with path.open("a") as f:
        f.write('{"event": "completion", "respo')
    report = run(root)
    assert report["read"]["completions"] == 23 and len(report["read"]["unreadable_lines"]) == 1
    assert str(path) in report["read"]["unreadable_lines"][0]
