"""Tool use on a lineage's gold tool conversations (eval-split records that declare tools): every
assistant turn of one is an item (data/prompts.py's tool_items), the conversation up to it the
prompt and the turn itself the gold. A round's reply to each is judged against it:

    tool_call_valid_rate  replies that call: every call parses, names a declared tool, and its
                          arguments satisfy the tool's JSON schema
    tool_call_accuracy    items whose gold calls: the same tools with equal arguments (canonical
                          JSON, in any order), and nothing broken beside them
    tool_selection        every item: the reply calls when the gold calls, and answers when it does not
    tool_result_use       items answering a tool result (whose result holds values to use): the
                          reply mentions one of them

Each is None when it has nothing to judge; n_tool_items and n_tool_calls count what they are over."""

from __future__ import annotations

import json

from ..lm.tool_calls import from_openai, parse, same_calls

TOOL_METRICS = ("tool_call_valid_rate", "tool_call_accuracy", "tool_selection", "tool_result_use")


def result_values(results: list[str]) -> list[str]:
    """What a reply could take from tool results: their string values of 3+ characters and their
    numbers (booleans, nulls and keys are not information); a result that is not JSON, as a whole."""
    out: list[str] = []

    def walk(v) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and len(v.strip()) >= 3:
            out.append(v.strip())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(str(v))

    for text in results:
        try:
            walk(json.loads(text))
        except ValueError:
            if text.strip():
                out.append(text.strip())
    return out


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def tool_metrics(items: list[dict], texts: list[str]) -> dict:
    """The four tool metrics over the items' replies, and what they count."""
    valid, accurate, selected, used = [], [], [], []
    for item, text in zip(items, texts):
        p = parse(text, item["tools"])
        if p.called:
            valid.append(not p.problems)
        if item["gold_calls"]:
            accurate.append(not p.problems and same_calls(p.calls, from_openai(item["gold_calls"])))
        selected.append(p.called == bool(item["gold_calls"]))
        values = result_values(item["results"]) if item["results"] and not item["gold_calls"] else []
        if values:
            low = p.content.lower()
            used.append(not p.called and any(v.lower() in low for v in values))
    return {
        "tool_call_valid_rate": _rate(valid),
        "tool_call_accuracy": _rate(accurate),
        "tool_selection": _rate(selected),
        "tool_result_use": _rate(used),
        "n_tool_items": len(items),
        "n_tool_calls": len(valid),
    }
