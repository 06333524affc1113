"""Tool use through `loraloop serve` with the official openai client, on the tiny fleet (whose tutor
was trained on the demo's tool conversations): a full agent loop with a calendar tool, streamed
and not; tool_choice none / auto / required / named; the second turn's assistant message with
tool_calls and null content; errors; the exchange logged in collect's schema with its tools and
calls; monitor's tool-call validity; the runtime adapter's call equal to the merged weights'."""

from __future__ import annotations

import json

import openai
import pytest
from conftest import copy_repo
from test_serve import Running

from loraloop.lm.tool_calls import parse
from loraloop.serve.logs import COUNTERS, SERVED, read_rows

CALENDAR = [
    {
        "type": "function",
        "function": {
            "name": "get_events",
            "description": "The student's calendar events on a day",
            "parameters": {
                "type": "object",
                "properties": {"date": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 20}},
                "required": ["date"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add_event",
            "description": "Put an event on the calendar",
            "parameters": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "date": {"type": "string"}},
                "required": ["title", "date"],
            },
        },
    },
]
EVENTS = {"friday": [{"title": "Chess club", "at": "16:00"}, {"title": "Math quiz", "at": "09:00"}]}


def run_tool(call) -> str:
    """The client side of the loop: the calendar the model asked about."""
    args = json.loads(call.function.arguments)
    if call.function.name == "get_events":
        return json.dumps({"events": EVENTS.get(args["date"], [])[: args.get("limit", 20)]})
    return json.dumps({"ok": True, "title": args["title"]})


@pytest.fixture(scope="module")
def server(tiny_fleet, tmp_path_factory):
    repo = copy_repo(tiny_fleet[0], tmp_path_factory.mktemp("tools") / "repo")
    s = Running(repo)
    yield s
    s.stop()


def complete(client, stream: bool, **kw):
    """One completion, streamed through the client's own stream helper (which reassembles
    tool-call deltas) or not."""
    if not stream:
        return client.chat.completions.create(**kw)
    with client.chat.completions.stream(**kw) as s:
        for _ in s:
            pass
        try:
            return s.get_final_completion()
        except openai.LengthFinishReasonError as cut:  # the helper refuses to parse a reply cut at max_tokens
            return cut.completion


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_agent_loop_calls_the_calendar_and_answers_from_its_result(server, stream):
    client = server.client()
    messages = [{"role": "user", "content": "What is on my calendar on friday?"}]
    kw = dict(model="tutor", tools=CALENDAR, temperature=0, max_tokens=120, user="agent", metadata={"opt_in": "true"})
    first = complete(client, stream, messages=messages, tool_choice="required", **kw)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in {"get_events", "add_event"}
        json.loads(call.function.arguments)  # a JSON string, as OpenAI's
    # The loop's second turn: the assistant's calls (content null) and each call's result.
    messages.append(choice.message.model_dump(exclude_none=True))
    assert "content" not in messages[-1] or not messages[-1]["content"]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": run_tool(c)} for c in choice.message.tool_calls]
    final = complete(client, stream, messages=messages, tool_choice="none", **kw)
    answer = final.choices[0]
    assert answer.message.tool_calls is None and isinstance(answer.message.content, str)
    assert answer.finish_reason in ("stop", "length")
    # Auto on the same turn: text, a call, or text around a call; never a broken call passed off as one.
    auto = complete(client, stream, messages=messages, tool_choice="auto", **kw).choices[0]
    if auto.message.tool_calls:
        assert auto.finish_reason == "tool_calls"
        assert all(c.function.name in {"get_events", "add_event"} for c in auto.message.tool_calls)
    else:
        assert auto.finish_reason in ("stop", "length")


def test_a_named_choice_calls_that_tool_and_streams_as_deltas(server):
    client = server.client()
    kw = dict(
        model="tutor",
        messages=[{"role": "user", "content": "Put the science fair on thursday."}],
        tools=CALENDAR,
        tool_choice={"type": "function", "function": {"name": "add_event"}},
        temperature=0.8,
        seed=5,
        max_tokens=150,
    )
    plain = client.chat.completions.create(**kw).choices[0]
    assert [c.function.name for c in plain.message.tool_calls] == ["add_event"]
    assert set(json.loads(plain.message.tool_calls[0].function.arguments)) >= {"title", "date"}
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert calls[0].id and calls[0].function.name == "add_event" and calls[0].index == 0
    args = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(args) == json.loads(plain.message.tool_calls[0].function.arguments)  # same seed
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(d.content and "<tool_call>" in d.content for d in deltas)  # the call is not text


def test_tool_requests_are_checked_with_clear_errors(server):
    client = server.client()
    base = dict(model="tutor", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    cases = [
        (dict(tool_choice={"type": "function", "function": {"name": "nope"}}, tools=CALENDAR), "names 'nope'"),
        (dict(tool_choice="required"), "tool_choice 'required' needs tools"),
        (
            dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "wrong"}}}]),
            "tools[0].function.parameters is not a JSON schema",
        ),
        (
            dict(messages=[{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "1"}]),
            "tool_call_id 'x' answers no tool call made before it",
        ),
        (dict(messages=[{"role": "tool", "content": "1"}]), "needs the tool_call_id"),
    ]
    for extra, message in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**{**base, **extra})
        assert message in err.value.message, err.value.message


def test_a_tool_exchange_is_logged_in_collects_schema_and_monitored(server):
    """An opted-in loop's records carry tools, calls and results, and collect reads them back as
    tool conversations; monitor reports the validity of the calls."""
    from loraloop.data.collect import normalize
    from loraloop.params import SourceParams

    client = server.client()
    messages = [{"role": "user", "content": "Anything on friday?"}]
    kw = dict(model="tutor", tools=CALENDAR, max_tokens=120, user="logged", metadata={"opt_in": "true"})
    call = client.chat.completions.create(messages=messages, tool_choice="required", **kw).choices[0].message
    messages.append(call.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": run_tool(c)} for c in call.tool_calls]
    client.chat.completions.create(messages=messages, tool_choice="none", **kw)
    rows = [r for r in read_rows(server.repo / SERVED) if r.get("user_id") == "logged"]
    assert rows and all(r["tools"] == CALENDAR for r in rows)
    called = [r for r in rows if r["messages"][-1].get("tool_calls")]
    assert called and called[0]["messages"][-1]["content"] is None
    answered = [r for r in rows if any(m["role"] == "tool" for m in r["messages"])]
    record = normalize(answered[0], SourceParams(path="served"), None, 32000)
    assert record["tools"] == CALENDAR and [m["role"] for m in record["messages"]][:3] == ["user", "assistant", "tool"]
    counters = [c for c in read_rows(server.repo / COUNTERS) if c.get("tool_choice") == "forced"]
    assert counters and all(c["rules"]["tool_call_valid"] == 1.0 and c["tool_calls"] >= 1 for c in counters)
    from loraloop.serve.monitor import summarize

    m = summarize([c for c in read_rows(server.repo / COUNTERS) if c.get("event") == "completion"], [])
    assert m["tool_call_replies"] >= len(counters) and 0 < m["tool_call_valid_rate"] <= 1


def test_the_runtime_adapter_calls_as_the_merged_weights_do(server):
    """Serving engines have lost tool calls with a runtime LoRA: the server's forced call (PEFT
    adapter on the base) equals the same decode on the base with the adapter merged in."""
    import yaml
    from peft import PeftModel

    from loraloop.lm.chat import prompt_ids
    from loraloop.lm.forced_call import forced_call
    from loraloop.lm.model import load_base, load_tokenizer

    repo = server.repo
    version = repo / "models/release/tutor/versions/tutor-v0.1"
    meta = yaml.safe_load((version / "metadata.yaml").read_text())
    text = "What is on my calendar on friday?"
    served = server.client().chat.completions.create(
        model="tutor@tutor-v0.1",
        messages=[{"role": "user", "content": text}],
        tools=CALENDAR,
        tool_choice="required",
        temperature=0,
        seed=11,
        max_tokens=120,
    )
    tok = load_tokenizer(repo / "models/base")
    merged = PeftModel.from_pretrained(load_base(repo / "models/base"), version / "adapter").merge_and_unload()
    msgs = [{"role": "system", "content": meta["system_prompts"]["tutor"]}, {"role": "user", "content": text}]
    ids = forced_call(merged, tok, prompt_ids(tok, msgs, CALENDAR), CALENDAR, None, 120, 0.0, seed=11)
    (call,) = parse(tok.decode(ids), CALENDAR).calls
    got = served.choices[0].message.tool_calls[0].function
    assert (got.name, json.loads(got.arguments)) == (call["name"], call["arguments"])
