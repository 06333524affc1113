"""Tool calls in a model's reply: the <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks
that loraloop's fallback rendering trains (and Hermes-style templates such as Qwen's write), read
back into calls, checked against the declared tools' JSON schemas, and written as OpenAI's
tool_calls. Torch-free: eval, serve and monitor judge replies with it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass
class Parsed:
    """A reply split into its text and its calls. `calls`: the valid ones, {name, arguments};
    `problems`: why each other block is not a call (it stays in `content` as text)."""

    content: str
    calls: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def called(self) -> bool:
        """Whether the reply tried to call anything (a valid call or a broken block)."""
        return bool(self.calls or self.problems)


def tool_specs(tools: list | None) -> dict[str, dict]:
    """Declared tool name -> its function spec (OpenAI's {"type": "function", "function": {...}} or bare)."""
    out = {}
    for t in tools or []:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn
    return out


def schema_problem(arguments: dict, spec: dict) -> str | None:
    """Why the arguments do not satisfy the tool's parameters schema, or None."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    schema = spec.get("parameters") or {"type": "object"}
    try:
        cls = validators.validator_for(schema)
        cls.check_schema(schema)
    except SchemaError as exc:
        return f"the tool's parameters are not a valid JSON schema: {exc.message}"
    error = next(iter(cls(schema).iter_errors(arguments)), None)
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path))
    return f"{spec['name']}: {where + ': ' if where else ''}{error.message}"


def read_call(body: str, specs: dict[str, dict]) -> tuple[dict | None, str | None]:
    """One block's call {name, arguments}, or why it is not one."""
    try:
        call = json.loads(body)
    except ValueError:
        return None, "not JSON"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None, "no tool name"
    args = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None, f"{call['name']}: arguments are not JSON"
    if not isinstance(args, dict):
        return None, f"{call['name']}: arguments are not an object"
    if call["name"] not in specs:
        return None, f"{call['name']!r} is not a declared tool ({', '.join(sorted(specs)) or 'none declared'})"
    problem = schema_problem(args, specs[call["name"]])
    return (None, problem) if problem else ({"name": call["name"], "arguments": args}, None)


def parse(text: str, tools: list | None) -> Parsed:
    """The reply's calls and text. A block that is not a valid call of a declared tool stays in the
    text (never passed off as a call); an opened block never closed is a problem too."""
    specs = tool_specs(tools)
    out = Parsed(content="")
    kept: list[str] = []
    last = 0
    for m in _BLOCK.finditer(text):
        kept.append(text[last : m.start()])
        call, problem = read_call(m.group(1).strip(), specs)
        if call is None:
            out.problems.append(problem)
            kept.append(m.group(0))
        else:
            out.calls.append(call)
        last = m.end()
    tail = text[last:]
    if OPEN in tail:
        out.problems.append("a <tool_call> never closed")
    kept.append(tail)
    out.content = "".join(kept).strip()
    return out


def canonical(arguments: dict) -> str:
    """Arguments as canonical JSON: equal arguments, equal strings."""
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def same_calls(a: list[dict], b: list[dict]) -> bool:
    """Whether two lists of calls name the same tools with equal arguments (in any order)."""
    key = lambda c: (c["name"], canonical(c["arguments"]))  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


def from_openai(tool_calls: list[dict]) -> list[dict]:
    """OpenAI-style tool_calls (arguments a JSON string) as {name, arguments}."""
    out = []
    for c in tool_calls:
        fn = c.get("function", c)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {"_unparsed": args}
        out.append({"name": fn.get("name"), "arguments": args})
    return out


def to_openai(calls: list[dict], seed: str) -> list[dict]:
    """Calls as OpenAI's tool_calls: ids derived from `seed` (the response id), arguments a JSON string."""
    return [
        {
            "id": "call_" + hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:24],
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
        }
        for i, c in enumerate(calls)
    ]


def as_text(call: dict) -> str:
    """A call as the model writes it (the training rendering's block)."""
    return f"{OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{CLOSE}"


def written(message: dict) -> str:
    """An assistant message as the model wrote it: its text, or its calls as call blocks."""
    calls = "\n".join(as_text(c) for c in from_openai(message.get("tool_calls") or []))
    return "\n".join(x for x in (message.get("content") or "", calls) if x)
