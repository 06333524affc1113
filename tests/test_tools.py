"""Tool-use conversations end to end: collect keeps calls and results, scrub masks PII inside them
and checks them, training learns the assistant's calls and text but never the tool results, and
score judges a call by whether it parses and names a declared tool."""

import json

import pytest
import torch
from conftest import write_lines

from loraloop.data import collect, scrub
from loraloop.data.prompts import tool_items
from loraloop.files import read_jsonl
from loraloop.judge import rules
from loraloop.judge.tool_eval import result_values, tool_metrics
from loraloop.lm import loss as lm_loss
from loraloop.lm.chat import prompt_ids, training_ids
from loraloop.lm.forced_call import forced_call
from loraloop.lm.model import load_base, load_tokenizer
from loraloop.lm.tool_calls import as_text, parse, same_calls
from loraloop.params import CollectParams, RuleParams, ScrubParams, SourceParams

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add_task",
            "description": "Add a homework task",
            "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "due": {"type": "string"}}},
        },
    }
]


def tool_conversation(email="minji@school.example", args=None, result="task 17 added"):
    args = args if args is not None else json.dumps({"title": f"Fractions quiz, mail {email}", "due": "friday"})
    return {
        "character_id": "tutor",
        "opt_in": True,
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Remind me to study fractions for Friday's quiz.", "name": "Minji"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "add_task", "arguments": args}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": result},
            {"role": "assistant", "content": "Added! Which kind of fraction problem feels hardest right now?"},
        ],
    }


def collect_and_scrub(tmp_path, rows):
    src = write_lines(tmp_path / "raw.jsonl", rows)
    collect.run(CollectParams(sources=[SourceParams(path=str(src))]), tmp_path / "collected")
    stats = scrub.run(ScrubParams(), tmp_path / "collected/records.jsonl", tmp_path / "scrubbed", tmp_path / "m.json")
    out = tmp_path / "scrubbed/tutor/records.jsonl"
    return stats, list(read_jsonl(out)) if out.exists() else []


def test_tool_calls_survive_collect_and_scrub_masks_inside_them(tmp_path):
    stats, kept = collect_and_scrub(tmp_path, [tool_conversation(result="sent to minji@school.example")])
    assert stats["kept"] == 1
    rec = kept[0]
    assert rec["tools"] == TOOLS and rec["shape"] == "openai"
    call = rec["messages"][1]["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"]["name"] == "add_task"
    args = json.loads(call["function"]["arguments"])
    assert args == {"title": "Fractions quiz, mail <EMAIL_1>", "due": "friday"}  # the same address, one placeholder
    assert rec["messages"][2]["content"] == "sent to <EMAIL_1>" and rec["messages"][2]["tool_call_id"] == "call_1"
    assert rec["messages"][0]["name"] == "<NAME_1>" and "minji@" not in json.dumps(rec)


def test_broken_tool_use_is_rejected_with_a_reason(tmp_path):
    bad_args = tool_conversation(args='{"title": "quiz"')
    orphan = tool_conversation()
    orphan["messages"][2]["tool_call_id"] = "call_9"
    no_result = tool_conversation()
    del no_result["messages"][2]
    stats, kept = collect_and_scrub(tmp_path, [bad_args, orphan, no_result])
    assert stats["kept"] == 0
    assert stats["reasons"] == {"bad_tool_arguments": 1, "unanswered_tool_result": 1, "bad_turn_order": 1}


def test_training_learns_calls_and_text_but_never_tool_results(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    conv = tool_conversation()["messages"]
    conv[1]["tool_calls"][0]["function"]["arguments"] = json.dumps({"title": "quiz", "due": "friday"})
    ids, mask = training_ids(tok, [{"role": "system", "content": "Be a tutor."}, *conv], 512, TOOLS)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    # SmolLM2's template has no tool support: the documented fallback writes the call as text.
    assert '<tool_call>\n{"name": "add_task", "arguments": {"title": "quiz", "due": "friday"}}\n</tool_call>' in trained
    assert "Which kind of fraction problem" in trained
    assert "task 17 added" in untrained and "task 17 added" not in trained
    assert "<tools>\nadd_task(title?: string, due?: string) - Add a homework task\n</tools>" in untrained
    # The loss at the tool result's positions is exactly zero.
    net = lm_loss.CountedTokenLoss(load_base(tiny_model_dir))
    batch = lm_loss.collate([{"ids": ids, "mask": mask}], tok.pad_token_id, "cpu")
    losses, counted = lm_loss.token_losses(net, batch)
    result_start = untrained.index("task 17 added")
    assert result_start > 0 and bool((losses[~counted] == 0).all()) and bool((losses[counted] > 0).all())
    # A prompt keeps the tools too.
    prompt = tok.decode(prompt_ids(tok, conv[:1], TOOLS))
    assert "<tools>" in prompt and prompt.rstrip().endswith("assistant")


def test_an_assistant_turn_with_weight_zero_is_not_trained(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad old reply.", "weight": 0},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "What shall we try?"},
    ]
    ids, mask = training_ids(tok, conv, 256)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "What shall we try?" in trained and "Bad old reply" not in trained
    assert torch.tensor(mask).any()


def test_tool_call_valid_rule():
    ok = '<tool_call>\n{"name": "add_task", "arguments": {"title": "quiz"}}\n</tool_call>'
    assert rules.tool_call_valid(ok, TOOLS) == 1.0
    assert rules.tool_call_valid(ok.replace("add_task", "delete_everything"), TOOLS) == 0.0
    assert rules.tool_call_valid("<tool_call>{not json}</tool_call>", TOOLS) == 0.0
    assert rules.tool_call_valid('<tool_call>{"name": "add_task", "arguments": {"t": 1}', TOOLS) == 0.0
    assert rules.tool_call_valid("What do you think?", TOOLS) is None
    p = RuleParams(weights={"question_ratio": 1.0, "tool_call_valid": 1.0})
    assert rules.rule_values(ok, p, tools=TOOLS) == {"tool_call_valid": 1.0}  # a call alone: judged as a call
    values = rules.rule_values("Done! What next?\n" + ok, p, tools=TOOLS)
    assert values["tool_call_valid"] == 1.0 and values["question_ratio"] == 0.5


CALENDAR = [
    {
        "type": "function",
        "function": {
            "name": "get_events",
            "description": "The student's calendar events on a day",
            "parameters": {
                "type": "object",
                "properties": {
                    "date": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1},
                    "kind": {"enum": ["school", "home"]},
                    "all_day": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["date", "limit"],
            },
        },
    },
    *TOOLS,
]


def test_a_call_is_valid_only_when_its_arguments_satisfy_the_schema():
    ok = as_text({"name": "get_events", "arguments": {"date": "friday", "limit": 3}})
    assert rules.tool_call_valid(ok, CALENDAR) == 1.0
    for bad, why in (
        ({"name": "get_events", "arguments": {"date": "friday"}}, "'limit' is a required property"),
        ({"name": "get_events", "arguments": {"date": "friday", "limit": 0}}, "limit: 0 is less than the minimum"),
        ({"name": "get_events", "arguments": {"date": 5, "limit": 1}}, "date: 5 is not of type 'string'"),
        ({"name": "get_events", "arguments": {"date": "x", "limit": 1, "kind": "gym"}}, "kind: 'gym' is not one of"),
    ):
        parsed = parse(as_text(bad), CALENDAR)
        assert not parsed.calls and why in parsed.problems[0], parsed.problems
        assert rules.tool_call_valid(as_text(bad), CALENDAR) == 0.0
    # Arguments as a JSON string (OpenAI's wire form) read the same; the text around calls stays.
    wire = json.dumps({"name": "get_events", "arguments": json.dumps({"date": "mon", "limit": 2})})
    text = f"Let me look.\n<tool_call>{wire}</tool_call>"
    parsed = parse(text, CALENDAR)
    assert parsed.calls == [{"name": "get_events", "arguments": {"date": "mon", "limit": 2}}]
    assert parsed.content == "Let me look." and not parsed.problems
    broken = parse('Sure <tool_call>{"name": "get_events"', CALENDAR)
    assert broken.problems == ["a <tool_call> never closed"] and broken.content.startswith("Sure <tool_call>")
    assert same_calls(
        [{"name": "a", "arguments": {"x": 1, "y": [1, 2]}}, {"name": "b", "arguments": {}}],
        [{"name": "b", "arguments": {}}, {"name": "a", "arguments": {"y": [1, 2], "x": 1}}],
    )
    assert not same_calls([{"name": "a", "arguments": {"x": 1}}], [{"name": "a", "arguments": {"x": "1"}}])


def gold_record(i: int, calls: bool) -> dict:
    row = {
        "id": f"{i:064x}",
        "character_id": "tutor",
        "tools": CALENDAR,
        "messages": [{"role": "user", "content": "What is on friday?"}],
    }
    if calls:
        row["messages"] += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_events", "arguments": '{"date": "friday", "limit": 5}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"events": [{"title": "Chess club", "at": 16}]}'},
            {"role": "assistant", "content": "You have Chess club at 16. Ready for it?"},
        ]
    else:
        row["messages"] += [{"role": "assistant", "content": "Let's look at your notes first. Which subject?"}]
    return row


def test_tool_metrics_judge_each_reply_against_the_gold_turn():
    items = tool_items([gold_record(1, True), gold_record(2, False)], 10, "seed", {"tutor": "You are a tutor."})
    by_kind = {(bool(it["gold_calls"]), bool(it["results"])): it for it in items}
    assert len(items) == 3 and by_kind[(False, True)]["results"] == ['{"events": [{"title": "Chess club", "at": 16}]}']
    assert all(it["messages"][0] == {"role": "system", "content": "You are a tutor."} for it in items)
    call = as_text({"name": "get_events", "arguments": {"limit": 5, "date": "friday"}})
    replies = {
        (True, False): call,  # the gold call, arguments in another order
        (False, True): "Chess club is at 16. What will you bring?",  # uses the result
        (False, False): "Which subject shall we start with?",  # answers, as the gold does
    }
    m = tool_metrics(items, [replies[k] for k in by_kind])
    assert m == {
        "tool_call_valid_rate": 1.0,
        "tool_call_accuracy": 1.0,
        "tool_selection": 1.0,
        "tool_result_use": 1.0,
        "n_tool_items": 3,
        "n_tool_calls": 1,
    }
    wrong = {
        (True, False): as_text({"name": "get_events", "arguments": {"date": "saturday", "limit": 5}}),
        (False, True): "Anything else?",  # ignores the result
        (False, False): as_text({"name": "add_task", "arguments": {"title": 7}}),  # calls, and badly
    }
    m = tool_metrics(items, [wrong[k] for k in by_kind])
    assert m["tool_call_valid_rate"] == 0.5 and m["tool_call_accuracy"] == 0.0
    assert m["tool_selection"] == pytest.approx(2 / 3) and m["tool_result_use"] == 0.0
    assert result_values(['{"ok": true, "task_id": 12, "title": "Quiz"}', "plain text"]) == ["12", "Quiz", "plain text"]


@pytest.mark.parametrize("name", [None, "add_task", "get_events"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_forced_call_is_always_a_valid_call_of_a_declared_tool(tiny_model_dir, name, temperature):
    """tool_choice required / named on a random model: the decoder keeps every token inside the
    call's schema, so even noise comes out a call that validates."""
    tok, model = load_tokenizer(tiny_model_dir), load_base(tiny_model_dir)
    prompt = prompt_ids(tok, [{"role": "user", "content": "What is on friday?"}], CALENDAR)
    seen = []
    ids = forced_call(model, tok, prompt, CALENDAR, name, 400, temperature, seed=3, on_token=seen.append)
    parsed = parse(tok.decode(ids), CALENDAR)
    assert seen == ids and not parsed.problems and len(parsed.calls) == 1, tok.decode(ids)
    call = parsed.calls[0]
    assert call["name"] == (name or call["name"]) and call["name"] in {"add_task", "get_events"}
    again = forced_call(model, tok, prompt, CALENDAR, name, 400, temperature, seed=3)
    assert again == ids  # the same seed, the same call
    cut = forced_call(model, tok, prompt, CALENDAR, name, 12, temperature, seed=3)
    assert len(cut) <= 12 and parse(tok.decode(cut), CALENDAR).problems == ["a <tool_call> never closed"]


def test_a_halted_forced_call_stops_at_its_next_forward_pass(tiny_model_dir):
    """A client that leaves during a required call: halt() is asked before each forward pass, and
    once it is true no further pass runs and no retry starts; the tokens so far are the result."""
    tok, model = load_tokenizer(tiny_model_dir), load_base(tiny_model_dir)
    prompt = prompt_ids(tok, [{"role": "user", "content": "What is on friday?"}], CALENDAR)
    whole = forced_call(model, tok, prompt, CALENDAR, "add_task", 400, 0.0, seed=3)
    asked = []

    def halt() -> bool:
        asked.append(1)
        return len(asked) > 3

    cut = forced_call(model, tok, prompt, CALENDAR, "add_task", 400, 0.0, seed=3, halt=halt)
    assert len(asked) == 4, "asked again after it said stop"
    assert 0 < len(cut) < len(whole) and whole[: len(cut)] == cut
