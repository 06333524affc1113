"""Tool-use conversations end to end: collect keeps calls and results, scrub masks PII inside them
and checks them, training learns the assistant's calls and text but never the tool results, and
score judges a call by whether it parses and names a declared tool."""

import json

import torch
from conftest import write_lines

from loraloop.data import collect, scrub
from loraloop.files import read_jsonl
from loraloop.judge import rules
from loraloop.lm import loss as lm_loss
from loraloop.lm.chat import prompt_ids, training_ids
from loraloop.lm.model import load_base, load_tokenizer
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
