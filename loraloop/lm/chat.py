"""The tokenizer's own chat template, used the same way by sampling, training and evaluation."""

from __future__ import annotations

import json

from .tool_calls import as_text


def supports_tools(tok) -> bool:
    """Whether the tokenizer's chat template renders tool calls itself."""
    template = tok.chat_template if isinstance(tok.chat_template, str) else json.dumps(tok.chat_template or "")
    return "tool_calls" in template


def _call_json(call: dict) -> dict:
    args = call["function"]["arguments"]
    try:
        args = json.loads(args)
    except ValueError:
        pass  # arguments that are not JSON are shown as they are
    return {"name": call["function"]["name"], "arguments": args}


def signature(tool: dict) -> str:
    """A tool schema in few tokens: name(param: type, optional?: type) - description."""
    fn = tool.get("function", tool)
    schema = fn.get("parameters") or {}
    required = set(schema.get("required") or [])
    params = ", ".join(
        f"{name}{'' if name in required else '?'}: {spec.get('type', 'any') if isinstance(spec, dict) else 'any'}"
        for name, spec in (schema.get("properties") or {}).items()
    )
    described = f" - {fn['description']}" if fn.get("description") else ""
    return f"{fn.get('name')}({params}){described}"


def for_template(tok, messages: list[dict], tools: list | None) -> tuple[list[dict], list | None]:
    """Messages (and tools) as the template takes them. A template that knows tools gets them as
    they are (arguments as objects, as HF templates expect). One that does not (SmolLM2's) gets the
    documented fallback: each call written into the assistant's text as
    <tool_call>{"name": ..., "arguments": ...}</tool_call>, results as `tool` turns, and the tools
    in the system turn between <tools></tools>, one signature a line (few tokens)."""
    if supports_tools(tok):
        native = [
            {**m, "tool_calls": [{**c, "function": _call_json(c)} for c in m["tool_calls"]]}
            if m.get("tool_calls")
            else m
            for m in messages
        ]
        return native, tools or None
    out = []
    for m in messages:
        turn = {k: v for k, v in m.items() if k in ("role", "content", "weight")}
        if m.get("tool_calls"):
            calls = "\n".join(as_text(_call_json(c)) for c in m["tool_calls"])
            text = m.get("content") or ""
            turn["content"] = f"{text}\n{calls}" if text.strip() else calls
        out.append(turn)
    if tools:
        block = (
            'Tools you can call, as <tool_call>{"name": ..., "arguments": {...}}</tool_call>:\n<tools>\n'
            + "\n".join(signature(t) for t in tools)
            + "\n</tools>"
        )
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, None


def render(tok, messages: list[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
    """The conversation as the template writes it; `messages` already in template form."""
    kwargs = {"tools": tools} if tools else {}
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


def encode(tok, text: str) -> list[int]:
    # The template already wrote any special tokens it wants; don't let the tokenizer add more.
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok, messages: list[dict], tools: list | None = None) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn."""
    msgs, tools = for_template(tok, messages, tools)
    return encode(tok, render(tok, msgs, add_generation_prompt=True, tools=tools))


def training_ids(
    tok, messages: list[dict], max_length: int, tools: list | None = None
) -> tuple[list[int], list[bool]] | None:
    """Token ids and a per-token mask that is True on assistant tokens (their content, their tool
    calls and the end-of-turn token, so the model learns to stop); never on tool results, and not
    on an assistant turn with weight 0. None if truncation leaves nothing to learn."""
    messages, tools = for_template(tok, messages, tools)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            head = render(tok, messages[:i], add_generation_prompt=True, tools=tools)
            _check_prefix(done, head)
            pieces.append((head[len(done) :], False))
            done = head
        full = render(tok, messages[: i + 1], add_generation_prompt=False, tools=tools)
        _check_prefix(done, full)
        pieces.append((full[len(done) :], m["role"] == "assistant" and m.get("weight", 1) != 0))
        done = full
    ids: list[int] = []
    mask: list[bool] = []
    for text, trained in pieces:
        piece = encode(tok, text)
        ids.extend(piece)
        mask.extend([trained] * len(piece))
    ids, mask = ids[:max_length], mask[:max_length]
    return (ids, mask) if any(mask) else None


def _check_prefix(prefix: str, text: str) -> None:
    if not text.startswith(prefix):
        raise ValueError(
            "the tokenizer's chat template does not render conversations prefix-stably; "
            "assistant-only loss masking needs a template where each turn appends to the previous text"
        )
