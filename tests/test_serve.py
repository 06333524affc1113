"""`loraloop serve` over real HTTP on loopback, driven by the official openai client, on the tiny
fleet repo's releases (real PEFT adapters on the tiny model): routing per character and user,
parallel requests, streaming, logs and feedback, errors, a rollback under traffic, the API key,
and vLLM's command line."""

import concurrent.futures as cf
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx2 as httpx  # what the openai client itself uses
import openai
import pytest
import torch
from conftest import copy_repo, edit_params, write_lines
from safetensors.torch import load_file, save_file

from loraloop.files import read_json
from loraloop.release import registry as release
from loraloop.serve.logs import COUNTERS, FEEDBACK, SERVED, read_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A `loraloop serve` process in `repo`, stopped by stop()."""

    def __init__(self, repo: Path, env: dict | None = None, args: tuple[str, ...] = ()):
        self.repo, self.port = repo, free_port()
        self.log = (repo.parent / f"serve-{self.port}.log").open("w+")
        self.proc = subprocess.Popen(
            ["loraloop", "serve", "--port", str(self.port), "--batch-wait-ms", "20", *args],
            cwd=repo,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.output()}")
            try:
                httpx.get(f"{self.url}/models", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("serve did not start")

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.output()


def second_version(repo: Path) -> str:
    """tutor-v0.2: tutor-v0.1's adapter with lora_B drawn at random (a few training steps leave it
    near zero, where any scaling of it changes little), released as a canary the way package does
    (archive, history), so it answers differently and can be promoted and rolled back."""
    rel = repo / "models/release/tutor"
    v1 = release.rollout(rel)["stable"]
    v2 = v1.replace("v0.1", "v0.2")
    shutil.copytree(rel / "versions" / v1, rel / "versions" / v2)
    weights = rel / "versions" / v2 / "adapter/adapter_model.safetensors"
    g = torch.Generator().manual_seed(0)
    tensors = {
        k: (torch.randn(v.shape, generator=g).to(v.dtype) if "lora_B" in k else v)
        for k, v in load_file(weights).items()
    }
    save_file(tensors, weights)
    meta = (rel / "versions" / v2 / "metadata.yaml").read_text().replace(v1, v2)
    (rel / "versions" / v2 / "metadata.yaml").write_text(meta)
    release.record(rel, {"action": "release", "version": v2, "round": "tutor-r1", "rollout": "canary"})
    return v2


@pytest.fixture(scope="module")
def served(tiny_fleet, tmp_path_factory):
    repo = copy_repo(tiny_fleet[0], tmp_path_factory.mktemp("serve") / "repo")
    v2 = second_version(repo)
    server = Running(repo)
    yield server, v2
    server.stop()


def ask(client, model="tutor", text="How do I add fractions?", user="u1", opt_in=False, **kw):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        user=user,
        metadata={"opt_in": "true" if opt_in else "false"},
        **{"temperature": 0, "max_tokens": 8, **kw},
    )


def reference_reply(repo: Path, version_dir: Path, character: str, text: str) -> str:
    """The same greedy reply computed in this process from the version's adapter."""
    from loraloop.lm.model import load_tokenizer

    tok = load_tokenizer(repo / "models/base")
    return tok.decode(reference_tokens(repo, version_dir, character, [text])[0], skip_special_tokens=True).strip()


def reference_tokens(repo: Path, version_dir: Path, character: str, texts: list[str]) -> list[list[int]]:
    """The greedy replies' tokens (8 at most), one prompt at a time, from the version's adapter."""
    from peft import PeftModel

    from loraloop.lm.generate import generate
    from loraloop.lm.model import load_base, load_tokenizer

    tok = load_tokenizer(repo / "models/base")
    model = PeftModel.from_pretrained(load_base(repo / "models/base"), version_dir / "adapter")
    made, greedy = [[] for _ in texts], dict(max_new_tokens=8, temperature=0, top_p=1, seed=0, desc="")
    prompts = [character_prompt(tok, version_dir, character, t) for t in texts]
    generate(model, tok, prompts, batch_size=1, on_token=lambda i, t: made[i].append(t), **greedy)
    return made


def character_prompt(tok, version_dir: Path, character: str, text: str) -> list[int]:
    """A user's message to the character, in the version's system prompt, as the server asks it."""
    import yaml

    from loraloop.lm.chat import prompt_ids

    meta = yaml.safe_load((version_dir / "metadata.yaml").read_text())
    msgs = [{"role": "system", "content": meta["system_prompts"][character]}, {"role": "user", "content": text}]
    return prompt_ids(tok, msgs)


def test_models_list_routes_and_versions(served):
    server, v2 = served
    ids = [m.id for m in server.client().models.list()]
    assert {"tutor", "pirate", "tutor@tutor-v0.1", f"tutor@{v2}", "pirate@pirate-v0.1"} <= set(ids)


def test_each_character_answers_from_its_own_adapter(served):
    server, v2 = served
    client = server.client()
    text = "Where are we sailing today?"
    for model, version_dir, character in [
        ("tutor", "models/release/tutor/versions/tutor-v0.1", "tutor"),
        ("pirate", "models/release/pirate/versions/pirate-v0.1", "pirate"),
        (f"tutor@{v2}", f"models/release/tutor/versions/{v2}", "tutor"),
    ]:
        r = ask(client, model, text)
        assert r.system_fingerprint == Path(version_dir).name
        assert r.choices[0].message.content == reference_reply(server.repo, server.repo / version_dir, character, text)
    # v2's adapter is v1's with another lora_B: sampled with the same seed, its replies differ
    # (greedy, the tiny random model can answer nothing but newlines under both).
    sampled = dict(temperature=1.0, seed=7)
    replies = [ask(client, m, text, **sampled).choices[0].message.content for m in ("tutor", f"tutor@{v2}")]
    assert replies[0] != replies[1], replies


def test_parallel_requests_none_lost_each_logged_once(served):
    server, _ = served
    client = server.client()
    with cf.ThreadPoolExecutor(32) as pool:
        replies = list(
            pool.map(
                lambda i: ask(
                    client,
                    ["tutor", "pirate"][i % 2],
                    f"question {i} secret-{i}-end",
                    f"user-{i}-end",
                    opt_in=i % 3 == 0,
                ),
                range(32),
            )
        )
    ids = [r.id for r in replies]
    assert len(set(ids)) == 32 and all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
    counters = [row for row in read_rows(server.repo / COUNTERS) if row.get("response_id") in ids]
    assert sorted(row["response_id"] for row in counters) == sorted(ids)  # each exactly once
    texts = [row for row in read_rows(server.repo / SERVED) if row["response_id"] in ids]
    assert sorted(row["response_id"] for row in texts) == sorted(r.id for i, r in enumerate(replies) if i % 3 == 0)
    # A user who did not opt in leaves no text anywhere.
    logged = "".join(p.read_text() for p in (server.repo / "data/raw/served").rglob("*.jsonl"))
    logged += "".join(p.read_text() for p in (server.repo / COUNTERS).glob("*.jsonl"))
    for i in range(32):
        assert (f"secret-{i}-end" in logged) == (i % 3 == 0)
        assert (f"user-{i}-end" in logged) == (i % 3 == 0)  # nor their user id


def test_stream_matches_the_plain_reply(served):
    server, _ = served
    client = server.client()
    plain = ask(client, "pirate", "Tell me about the sea").choices[0].message.content
    chunks = list(ask(client, "pirate", "Tell me about the sea", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens >= 1


def test_malformed_requests_get_json_4xx_naming_the_field(served):
    server, _ = served
    client = server.client()
    cases = [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages"),
    ]
    for body, field in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tutor", **body)
        assert err.value.body["param"] == field, err.value.body
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="captain", messages=[{"role": "user", "content": "hi"}])
    assert "tutor" in err.value.body["message"]
    r = httpx.post(f"{server.url}/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_feedback_in_collects_shape(served, tmp_path):
    server, _ = served
    client = server.client()
    # Sampled at temperature 1: the tiny random model's greedy reply may be empty, which collect
    # would rightly reject.
    good = ask(client, "tutor", "What is 2+2?", "fb-user", opt_in=True, extra_body={"temperature": 1.0, "seed": 7})
    bad = ask(client, "tutor", "What is 3+3?", "fb-user", opt_in=True, extra_body={"temperature": 1.0, "seed": 8})
    assert good.choices[0].message.content and bad.choices[0].message.content
    private = ask(client, "tutor", "What is 4+4?", "fb-other")
    post = lambda body: httpx.post(f"{server.url}/feedback", json=body)  # noqa: E731
    assert post({"response_id": good.id, "reaction": "up"}).json() == {"recorded": "feedback"}
    fix = "What do you get when you count three more from 3?"
    assert post({"response_id": bad.id, "reaction": "down", "corrected": fix}).json() == {"recorded": "feedback"}
    assert post({"response_id": private.id, "reaction": "down"}).json() == {"recorded": "counter"}
    r = post({"response_id": "chatcmpl-nope", "reaction": "up"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
    assert post({"response_id": good.id, "reaction": "meh"}).json()["error"]["param"] == "reaction"
    rows = {row["response_id"]: row for row in read_rows(server.repo / FEEDBACK)}
    assert set(rows) >= {good.id, bad.id} and private.id not in rows
    assert rows[bad.id]["corrected"] == fix and rows[bad.id]["response"] == bad.choices[0].message.content
    # collect reads them as feedback: the good one an SFT record, the bad one a pair.
    out = tmp_path / "collected"
    src = next((server.repo / FEEDBACK).glob("*.jsonl"))
    subprocess.run(["loraloop", "collect", "--source", str(src), "--kind", "feedback", "--out", str(out)], check=True)
    counts = read_json(out / "counts.json")
    assert counts["kept"] == counts["read"] >= 2
    kept = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert any(r.get("rejected") == bad.choices[0].message.content for r in kept)


def test_rollback_mid_traffic_switches_later_responses(served):
    server, v2 = served
    repo, client = server.repo, server.client()
    rel, routing = repo / "models/release/tutor", repo / "models/routing.json"
    release.promote(rel, routing, 1.0, v2)
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            seen.append((time.monotonic(), ask(client, "tutor", "hello", "steady-user").system_fingerprint))

    worker = threading.Thread(target=traffic)
    worker.start()
    while len(seen) < 3:
        time.sleep(0.05)
    left, to = release.rollback(rel, routing)
    switched = time.monotonic()
    while len([t for t, _ in seen if t > switched + 0.01]) < 3:
        time.sleep(0.05)
    stop.set()
    worker.join()
    assert (left, to) == (v2, "tutor-v0.1")
    versions = [v for _, v in seen]
    assert versions[0] == v2 and versions[-1] == "tutor-v0.1"
    first_old = versions.index("tutor-v0.1")
    assert all(v == "tutor-v0.1" for v in versions[first_old:])  # no flapping back
    assert all(v == "tutor-v0.1" for t, v in seen if t > switched + 0.01)


def test_api_key_required_when_set(served):
    repo = served[0].repo
    server = Running(repo, env={"LORALOOP_API_KEY": "s3cret-key"})  # a second server on the same project
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        assert httpx.get(f"{server.url}/models").status_code == 401
        assert "tutor" in [m.id for m in server.client("s3cret-key").models.list()]
        ask(server.client("s3cret-key"), "tutor")
    finally:
        out = server.stop()
    logged = "".join(p.read_text() for p in repo.rglob("*.jsonl") if "logs" in p.parts or "served" in p.parts)
    assert "s3cret-key" not in logged and "s3cret-key" not in out


def test_vllm_command_from_routing(served):
    repo = served[0].repo
    r = subprocess.run(["loraloop", "serve", "--engine", "vllm"], cwd=repo, capture_output=True, text=True)
    if shutil.which("vllm") is None:
        assert r.returncode == 1 and "vllm is not installed" in r.stdout
        cmd = r.stdout.splitlines()[-1].split()
        assert cmd[:3] == ["vllm", "serve", "models/base"] and "--enable-lora" in cmd
        assert cmd[cmd.index("--max-lora-rank") + 1] == "8"
        mods = cmd[cmd.index("--lora-modules") + 1 : cmd.index("--max-lora-rank")]
        assert "tutor=models/release/tutor/versions/tutor-v0.1/adapter" in mods
    cfg_file = repo / "models/release/pirate/versions/pirate-v0.1/adapter/adapter_config.json"
    original = cfg_file.read_text()
    try:
        cfg_file.write_text(json.dumps({**json.loads(original), "use_dora": True}))
        r = subprocess.run(["loraloop", "serve", "--engine", "vllm"], cwd=repo, capture_output=True, text=True)
    finally:
        cfg_file.write_text(original)
    assert r.returncode == 1 and "pirate" in r.stderr and "DoRA" in r.stderr and "Traceback" not in r.stderr


def test_monitor_reads_what_the_server_logged(served):
    server, _ = served
    ask(server.client(), "pirate", "Ahoy", "monitored-user")
    edit_params(server.repo, lambda p: p["monitor"].update(min_requests=1, alerts={"latency_p50_ms": {"max": 0.001}}))
    r = subprocess.run(["loraloop", "monitor"], cwd=server.repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = read_json(server.repo / "monitor/monitor.json")
    logged = [row for row in read_rows(server.repo / COUNTERS) if row["event"] == "completion"]
    served_pirate = sum(row["character"] == "pirate" for row in logged)
    assert report["characters"]["pirate"]["pirate-v0.1"]["requests"] == served_pirate
    assert "pirate-v0.1 (stable) is unhealthy: latency_p50_ms=" in r.stdout
    assert "To roll it back: loraloop release rollback pirate" in r.stdout


def test_status_counts_new_examples_and_stale_stages(served):
    server, _ = served
    for i in range(3):
        ask(server.client(), "pirate", f"Ahoy {i}", f"status-user-{i}", opt_in=True)
    edit_params(server.repo, lambda p: p["retrain"].update(min_new_examples=3))
    r = subprocess.run(["loraloop", "status", "--json"], cwd=server.repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    pirate = next(s for s in status["lineages"] if s["lineage"] == "pirate")
    opted = [row for row in read_rows(server.repo / SERVED) if row["character_id"] == "pirate"]
    assert pirate["new_examples"]["served"] == len(opted) >= 3 and pirate["retrain_due"]
    # the served logs are collect's input: the data and everything after it is out of date
    assert "collect" in status["stale"] and "train@pirate-r1" not in status["stale"]
    assert {"collect", "version", "train@pirate-r1", "package"} <= set(status["repro_would_run"])
    # what it computed in-process (params read once, one index) is what DVC's own status says
    dvc = subprocess.run(["dvc", "status", "--json"], cwd=server.repo, capture_output=True, text=True, check=True)
    assert set(status["stale"]) == set(json.loads(dvc.stdout))
    text = subprocess.run(["loraloop", "status"], cwd=server.repo, capture_output=True, text=True).stdout
    assert "retrain due" in text and "`dvc repro` would run up to" in text


def test_the_tool_parser_follows_the_template_that_wrote_the_calls(tmp_path):
    from loraloop.serve.vllm import tool_parser

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    # SmolLM2's template shows no tools: its calls are loraloop's fallback (Hermes) blocks.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert tool_parser(tmp_path) == "hermes"
    # A Llama 3 template renders tools itself: its own JSON calls.
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{% if tools %}{{ tools }}{% endif %}"})
    )
    assert tool_parser(tmp_path) == "llama3_json"


def test_logs_are_read_from_a_day_on(tmp_path):
    for day in ("2026-01-01", "2026-02-01", "2026-03-01"):
        write_lines(tmp_path / f"{day}.jsonl", [{"day": day}])
    write_lines(tmp_path / "monitor.jsonl", [{"day": None}])  # not a day file: always read
    assert [r["day"] for r in read_rows(tmp_path, since_day="2026-02-01")] == ["2026-02-01", "2026-03-01", None]
    assert len(list(read_rows(tmp_path))) == 4


def test_requests_batched_together_are_drafted_row_by_row(tiny_fleet, tmp_path):
    """Engine, speculative on: requests that arrive together are drafted as rows of one batch,
    each row keeping its own drafts: greedy replies are what each gets alone without drafting,
    a halted row ends where it was halted while the others go on, and each records its counts."""
    from loraloop.lm import mtp
    from loraloop.serve.engine import Engine, Job

    repo = tiny_fleet[0]
    version = repo / "models/release/tutor/versions/tutor-v0.1"
    adapter = tmp_path / "adapter"
    shutil.copytree(version / "adapter", adapter)
    heads = mtp.MTPHeads(read_json(repo / "models/base/config.json")["hidden_size"], 2)
    with torch.no_grad():
        for param in heads.parameters():
            param.normal_(0, 0.05, generator=torch.Generator().manual_seed(4))
    mtp.save(heads, adapter / mtp.HEADS_FILE)
    texts = ["How do I add fractions?", "What is a prime?", "Why is the sky blue, and why at noon?"]
    want = reference_tokens(repo, version, "tutor", texts)
    engine = Engine(repo / "models/base", batch_size=4, batch_wait=1.0, speculative="on")
    try:
        ids = [character_prompt(engine.tok, version, "tutor", t) for t in texts]
        done = [threading.Event() for _ in texts]

        def job(i: int) -> Job:
            def heard(token: int, i=i) -> None:
                if i == 2 and len(jobs[2].tokens) >= 3:
                    jobs[2].halted = True  # as the server does when a client leaves

            return Job(ids[i], adapter, 8, 0.0, 1.0, 0, heard, lambda exc, i=i: done[i].set())

        jobs = [job(i) for i in range(3)]
        for j in jobs:
            engine.submit(j)
        assert all(d.wait(120) for d in done)
    finally:
        engine.close()
    assert engine.batches == 1 and engine.batched == 3 and engine.drafted == 3
    for i in (0, 1):
        assert jobs[i].tokens == want[i]
        assert jobs[i].speculative["tokens"] == len(jobs[i].tokens) and len(jobs[i].speculative["acceptance"]) == 2
    assert jobs[2].tokens == want[2][:3] and jobs[2].speculative["tokens"] == 3


def test_a_release_with_heads_is_served_drafting_with_them(tiny_fleet, tmp_path):
    """serve --speculative on: a request alone in its batch, to a release whose adapter has
    multi-token heads, is drafted and verified: the greedy reply is plain greedy decoding's, whole
    or streamed, and its counters row says how many drafts were kept; a release without heads (the
    pirate's) is served as before."""
    from loraloop.lm import mtp

    repo = copy_repo(tiny_fleet[0], tmp_path / "repo")  # not the module's: its tests reroute it
    version = repo / "models/release/tutor/versions/tutor-v0.1"
    heads = mtp.MTPHeads(read_json(repo / "models/base/config.json")["hidden_size"], 2)
    with torch.no_grad():
        for param in heads.parameters():
            param.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    mtp.save(heads, version / "adapter" / mtp.HEADS_FILE)
    server = Running(repo, args=("--speculative", "on"))
    try:
        client, text = server.client(), "How do I add fractions?"
        want = reference_reply(repo, version, "tutor", text)
        whole = ask(client, "tutor@tutor-v0.1", text)
        assert whole.choices[0].message.content == want
        chunks = client.chat.completions.create(
            model="tutor@tutor-v0.1",
            messages=[{"role": "user", "content": text}],
            temperature=0,
            max_tokens=8,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == want
        sampled = ask(client, "tutor@tutor-v0.1", text, temperature=1.0, seed=5)
        pirate = ask(client, "pirate", text)
    finally:
        server.stop()
    rows = {row["response_id"]: row for row in read_rows(repo / COUNTERS) if "response_id" in row}
    for r in (whole, sampled):
        spec = rows[r.id]["speculative"]
        assert len(spec["acceptance"]) == 2 and spec["tokens"] == r.usage.completion_tokens
    assert "speculative" not in rows[pirate.id]
