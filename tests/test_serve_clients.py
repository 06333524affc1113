"""`loraloop serve` against real clients and hostile ones, over real HTTP on the tiny fleet: OpenAI
conformance clients rely on (stop sequences, text parts, Model objects and retrieve, the error
envelope everywhere, unsupported fields refused), bounded input (body size, nesting, UTF-8, JSON,
metadata, message count), authentication before parsing, CPU work off the event loop, clients
that leave (their generation halts and is logged as cancelled), anonymous canary traffic, feedback
found from an index, and logs a torn line cannot poison."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from conftest import copy_repo
from test_serve import Running, ask, second_version

from loraloop.release import registry as release
from loraloop.serve.logs import COUNTERS, SERVED, DailyLog, read_rows

PAST = 20_000  # exchanges in the logs before the server starts: feedback finds them by index


def seed_past_logs(repo) -> str:
    """Yesterday's logs with PAST exchanges, one of them opted in: its response id."""
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    (repo / COUNTERS).mkdir(parents=True, exist_ok=True)
    (repo / SERVED).mkdir(parents=True, exist_ok=True)
    base = {"event": "completion", "route": "tutor", "character": "tutor", "version": "tutor-v0.1"}
    with (repo / COUNTERS / f"{day}.jsonl").open("w") as f:
        for i in range(PAST):
            f.write(json.dumps({**base, "response_id": f"chatcmpl-past{i}", "opt_in": i == 7}) + "\n")
    record = {
        "response_id": "chatcmpl-past7",
        "character_id": "tutor",
        "opt_in": True,
        "user_id": "old-user",
        "messages": [{"role": "user", "content": "What is 5+5?"}, {"role": "assistant", "content": "Ten?"}],
    }
    (repo / SERVED / f"{day}.jsonl").write_text(json.dumps(record) + "\n")
    return "chatcmpl-past7"


@pytest.fixture(scope="module")
def server(tiny_fleet, tmp_path_factory):
    repo = copy_repo(tiny_fleet[0], tmp_path_factory.mktemp("clients") / "repo")
    second_version(repo)
    seed_past_logs(repo)
    s = Running(repo, args=("--limit", "body_bytes=262144", "--limit", "messages=8"))
    yield s
    s.stop()


def post(server, body: bytes | dict, headers: dict | None = None, path: str = "/chat/completions"):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}{path}", content=content, headers={"content-type": "application/json", **(headers or {})}
    )


def envelope(r) -> dict:
    """The OpenAI error envelope every refusal answers in."""
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


HI = [{"role": "user", "content": "How do I add fractions?"}]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_stop_sequences_end_the_reply_before_them(server, stream):
    client = server.client()
    sampled = dict(temperature=1.0, seed=11, max_tokens=40)
    full = ask(client, **sampled).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    if stream:
        chunks = list(ask(client, stop=[stop, "never-there"], stream=True, **sampled))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        r = ask(client, stop=stop, **sampled)
        text, finish = r.choices[0].message.content, [r.choices[0].finish_reason]
        assert r.usage.completion_tokens < 40  # generation ended at the stop, not at max_tokens
    assert text == full[: full.find(stop)] and stop not in text
    assert finish == ["stop"]


def test_text_part_content_reads_as_its_text(server):
    client = server.client()
    parts = [{"type": "text", "text": "How do I"}, {"type": "text", "text": "add fractions?"}]
    as_parts = client.chat.completions.create(
        model="tutor", messages=[{"role": "user", "content": parts}], user="u1", temperature=0, max_tokens=8
    )
    joined = ask(client, text="How do I\nadd fractions?")
    assert as_parts.choices[0].message.content == joined.choices[0].message.content


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"n": 2}, "n"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"note": "x" * 513}}, "metadata"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": HI * 9}, "messages"),
    ],
)
def test_what_the_server_does_not_do_is_refused_naming_the_field(server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="tutor", **{"messages": HI, "max_tokens": 4, **extra})
    assert err.value.body["param"] == param, err.value.body


def test_response_format_text_and_n_1_are_served(server):
    r = server.client().chat.completions.create(
        model="tutor", messages=HI, max_tokens=4, n=1, response_format={"type": "text"}, logprobs=False
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_models_are_openai_model_objects_and_retrievable(server):
    client = server.client()
    models = client.models.list().data
    assert {"tutor", "pirate", "tutor@tutor-v0.1"} <= {m.id for m in models}
    for m in models:
        assert m.object == "model" and m.owned_by == "loraloop" and isinstance(m.created, int) and m.created > 0
    assert client.models.retrieve("tutor@tutor-v0.1").id == "tutor@tutor-v0.1"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("captain")
    assert err.value.body["code"] == "model_not_found"


def test_unknown_paths_and_methods_answer_in_the_error_envelope(server):
    r = httpx.get(f"{server.url}/nothing/here")
    assert r.status_code == 404 and "/v1/nothing/here" in envelope(r)["message"]
    r = httpx.delete(f"{server.url}/chat/completions")
    assert r.status_code == 405 and envelope(r)["type"] == "invalid_request_error"


def test_hostile_bodies_get_400s_in_the_envelope(server):
    deep = b'{"model": "tutor", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    cases = {
        "nests deeper than 64": deep,
        "not UTF-8": b'{"model": "tutor", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "not JSON": b'{"model": "tutor", "messages": [{"role": "us',
    }
    for said, body in cases.items():
        r = post(server, body)
        err = envelope(r)
        assert r.status_code == 400 and said in err["message"] and err["param"] is None, err
    assert "line 1, column" in envelope(post(server, cases["not JSON"]))["message"]


def test_a_body_over_the_limit_is_refused_unread(server):
    big = {"model": "tutor", "messages": HI, "junk": "x" * 300_000}
    r = post(server, big)
    assert r.status_code == 413 and envelope(r)["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "tutor", "junk": "'
        for _ in range(40):
            yield b"x" * 10_000
        yield b'"}'

    r = httpx.post(f"{server.url}/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and envelope(r)["code"] == "request_too_large"


def test_a_limit_that_does_not_exist_is_named(server):
    r = subprocess.run(["loraloop", "serve", "--limit", "bodysize=3"], cwd=server.repo, capture_output=True, text=True)
    assert r.returncode == 2 and "'bodysize' is not a limit" in r.stderr and "body_bytes" in r.stderr


def test_anonymous_requests_spread_over_a_canary(server):
    rel, routing = server.repo / "models/release/tutor", server.repo / "models/routing.json"
    v2 = release.rollout(rel)["canary"] or "tutor-v0.2"
    release.promote(rel, routing, 0.5, v2)
    try:
        client = server.client()
        seen = [
            client.chat.completions.create(model="tutor", messages=HI, max_tokens=1).system_fingerprint
            for _ in range(24)
        ]
        assert {"tutor-v0.1", v2} == set(seen), seen
    finally:
        release.rollback(rel, routing)


def test_feedback_finds_past_exchanges_by_index(server):
    ok = post(
        server, {"response_id": "chatcmpl-past7", "reaction": "down", "corrected": "5+5 is 10."}, path="/feedback"
    )
    assert ok.json() == {"recorded": "feedback"}
    row = [r for r in read_rows(server.repo / "data/raw/served/feedback") if r["response_id"] == "chatcmpl-past7"][0]
    assert row["messages"] == [{"role": "user", "content": "What is 5+5?"}] and row["response"] == "Ten?"
    assert post(server, {"response_id": "chatcmpl-past8", "reaction": "up"}, path="/feedback").json() == {
        "recorded": "counter"
    }
    r = post(server, {"response_id": "chatcmpl-never", "reaction": "up"}, path="/feedback")
    assert r.status_code == 404 and envelope(r)["param"] == "response_id"


def counters(server) -> list[dict]:
    return [r for r in read_rows(server.repo / COUNTERS) if r.get("event") == "completion"]


def test_a_client_that_leaves_halts_its_generation_and_is_logged_cancelled(server):
    """Logged cancelled only when halted before its end (so under max_tokens, and no end-of-turn)."""
    client = server.client()
    kw = dict(temperature=1.0, seed=5, max_tokens=4000)
    ids = []
    for _ in range(4):
        with httpx.stream(
            "POST",
            f"{server.url}/chat/completions",
            json={"model": "tutor", "messages": HI, "stream": True, "user": "leaver", **kw},
        ) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            ids.append(json.loads(first[6:])["id"])
    # and one non-streamed client that gives up waiting
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/chat/completions", json={"model": "tutor", "messages": HI, **kw}, timeout=0.3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = {r["response_id"]: r for r in counters(server)}
        cancelled = [r for r in rows.values() if r.get("finish_reason") == "cancelled"]
        if set(ids) <= set(rows) and len(cancelled) >= 5:
            break
        time.sleep(0.2)
    assert {rows[i]["finish_reason"] for i in ids} == {"cancelled"}
    assert all(r["completion_tokens"] < 4000 for r in cancelled), [r["completion_tokens"] for r in cancelled]
    assert ask(client, max_tokens=4).choices[0].finish_reason in ("stop", "length")  # the server serves on


def test_a_torn_log_line_stays_alone(server):
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    log = server.repo / COUNTERS / f"{today}.jsonl"
    ask(server.client(), max_tokens=2)
    with log.open("a") as f:
        f.write('{"event": "completion", "response_id": "torn')  # a crash mid-write
    ask(server.client(), max_tokens=2)
    lines = log.read_text().splitlines()
    torn = next(i for i, line in enumerate(lines) if line.endswith('"torn'))
    assert json.loads(lines[torn + 1])["event"] == "completion"
    problems: list[str] = []
    list(read_rows(log.parent, problems))
    assert problems == [f"{log}:{torn + 1}: not a JSON object (a line cut by a crash?)"]


def test_an_appended_row_is_found_at_the_offset_returned_after_a_torn_line(tmp_path):
    logs, when = DailyLog(tmp_path), dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    first, at = logs.append(Path("c"), {"n": 1}, when)
    assert at == 0
    with open(first, "ab") as f:
        f.write(b'{"n": 2, "cut')  # a crash mid-write
    path, at = logs.append(Path("c"), {"n": 3}, when)
    with open(path, "rb") as f:
        f.seek(at)
        assert json.loads(f.readline()) == {"n": 3}
    assert Path(path).read_bytes().splitlines()[1] == b'{"n": 2, "cut'


@pytest.fixture(scope="module")
def keyed(server):
    s = Running(
        server.repo,
        env={"LORALOOP_API_KEY": "k3y-value"},
        args=("--limit", "body_bytes=8388608", "--limit", "message_chars=8000000"),
    )
    yield s
    s.stop()


def test_authentication_comes_before_the_body(keyed):
    r = post(keyed, b"{not json at all")
    assert r.status_code == 401 and envelope(r)["code"] == "invalid_api_key"
    r = post(keyed, {"model": "tutor", "messages": HI, "max_tokens": 2}, headers={"authorization": "k3y-value"})
    assert r.status_code == 401  # a bare key names no scheme
    r = post(keyed, {"model": "tutor", "messages": HI, "max_tokens": 2}, headers={"authorization": "bearer k3y-value"})
    assert r.status_code == 200  # RFC 7235: the scheme is case-insensitive


def test_a_long_input_is_tokenized_off_the_event_loop(keyed):
    """While a 3 MB conversation is parsed and tokenized (then refused for the model's context),
    /v1/models answers: it does not wait behind that work."""
    auth = {"authorization": "Bearer k3y-value"}
    body = {"model": "tutor", "messages": [{"role": "user", "content": "fraction " * 330_000}], "max_tokens": 2}
    done: dict = {}

    def big():
        done["status"] = post(keyed, body, headers=auth).status_code
        done["at"] = time.monotonic()

    worker = threading.Thread(target=big)
    worker.start()
    time.sleep(0.3)  # the body is in; parsing and tokenizing have begun
    r = httpx.get(f"{keyed.url}/models", headers=auth)
    answered = time.monotonic()
    worker.join()
    assert r.status_code == 200 and done["status"] == 400
    assert answered < done["at"], "GET /v1/models waited for the long input's tokenization"
