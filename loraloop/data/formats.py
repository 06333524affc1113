"""Chat-data shapes to the record's messages. A source's `format` names one shape, or `auto`
decides per record:

- openai: `messages` of role/content (content a string or a list of text parts, `text` or
  `value`), `name`, assistant
  `tool_calls` (and the legacy `function_call`), `tool` messages with `tool_call_id`, and the
  per-message `weight` (0/1) of OpenAI's fine-tuning format; also `prompt` + `completion`.
- sharegpt: `conversations` of from/value (human/user, gpt/assistant/model, system, function_call,
  observation/tool, in any case), top-level `system` and `tools`.
- alpaca: `instruction`, `input`, `output` (Magpie's `response`), `system`, `history` pairs.
- preference: `prompt` + `chosen` / `rejected` as strings, messages or whole conversations with an
  implicit shared prompt; ShareGPT-style `conversations` + `chosen` / `rejected` messages.
- hh: HH-RLHF transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") as `chosen` / `rejected`.
- lmsys (`conversation`), prosocial (`context` + `response`).

Every shape gives messages with role system/user/assistant/tool; a preference also gives the
rejected reply (the chosen one is the last message). What a shape does not use stays with the
record (collect keeps it under `meta`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .sources import Reject

SHAPES = ("openai", "sharegpt", "alpaca", "preference", "hh", "lmsys", "prosocial")
ROLES = {"system", "user", "assistant", "tool"}
_SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool", "tool": "tool", "function_response": "tool", "function": "tool", "ipython": "tool",
}  # fmt: skip
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass
class Shaped:
    shape: str
    messages: list[dict]
    rejected: str | None = None  # a preference's rejected reply
    tools: list | None = None
    used: set[str] = field(default_factory=set)  # the top-level fields the shape consumed


# --- one message ----------------------------------------------------------------------------------


def text_of(content, where: str) -> str:
    """A message's content as text: a string, or a list of parts of which only text is allowed."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                key = "text" if "text" in part or "value" not in part else "value"  # {"type": "text", "value"}
                if not isinstance(part.get(key), str):
                    raise Reject("content_not_a_string", f"{where}[{j}].{key}")
                texts.append(part[key])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Reject("non_text_content", f"{where}[{j}]", f"a {kind} part; only text is trained on")
        return "\n".join(texts)
    raise Reject("content_not_a_string", where)


def tool_call(call, where: str) -> dict:
    """An OpenAI-style tool call {id, type, function: {name, arguments as a JSON string}}."""
    if not isinstance(call, dict):
        raise Reject("bad_tool_call", where)
    fn = call.get("function", call)  # ShareGPT's function_call value is {name, arguments} itself
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise Reject("bad_tool_call", f"{where}.function.name")
    args = fn.get("arguments", fn.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False, sort_keys=True)
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


# Multimodal records (LLaVA, LLaMA-Factory): the media beside the text, `<image>` placeholders in it.
MEDIA_FIELDS = ("images", "videos", "audios", "image", "video", "audio")


def media_field(obj: dict) -> str | None:
    """The field that makes a record multimodal, if any."""
    return next((k for k in MEDIA_FIELDS if obj.get(k) not in (None, "", [], {})), None)


def as_negative(shaped: Shaped) -> Shaped:
    """A conversation whose last reply is one not to give (KTO's label: false): that reply at weight
    0, and the rejected side of the pair an on-policy answer will be paired against."""
    *context, reply = shaped.messages
    if reply["role"] != "assistant" or reply.get("tool_calls"):
        raise Reject("label_without_reply", "label", "label false needs the conversation to end with the reply")
    shaped.messages = [*context, {**reply, "weight": 0}]
    shaped.rejected = reply["content"]
    return shaped


def message(m, where: str, max_chars: int) -> dict:
    """One OpenAI-style message, checked and reduced to what the record keeps."""
    if not isinstance(m, dict):
        raise Reject("message_not_an_object", where)
    role = m.get("role")
    if role == "function":  # OpenAI's legacy tool result
        role = "tool"
    if role not in ROLES:
        raise Reject("unknown_role", f"{where}.role")
    calls = m.get("tool_calls")
    if calls is None and isinstance(m.get("function_call"), dict):
        calls = [m["function_call"]]
    out: dict = {"role": role}
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or not calls:
            raise Reject("bad_tool_call", f"{where}.tool_calls")
        out["tool_calls"] = [tool_call(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(calls)]
    content = m.get("content")
    text = "" if content is None and calls else text_of(content, f"{where}.content")
    if not text.strip() and not calls:
        raise Reject("empty_content", f"{where}.content")
    if len(text) > max_chars:
        raise Reject("message_too_long", f"{where}.content")
    out["content"] = text
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None:
            if not isinstance(m[key], str):
                raise Reject(f"bad_{key}", f"{where}.{key}")
            out[key] = m[key]
    if "weight" in m:  # OpenAI fine-tuning: weight 0 = do not train on this assistant turn
        if m["weight"] not in (0, 1) or isinstance(m["weight"], bool) or role != "assistant":
            raise Reject("bad_message_weight", f"{where}.weight")
        if m["weight"] == 0:
            out["weight"] = 0
    return out


def messages_of(value, where: str, max_chars: int) -> list[dict]:
    if value is None:
        raise Reject("missing_messages", where)
    if not isinstance(value, list):
        raise Reject("messages_not_a_list", where)
    return [message(m, f"{where}[{i}]", max_chars) for i, m in enumerate(value)]


def sharegpt_message(m, where: str, max_chars: int) -> dict:
    if not isinstance(m, dict):
        raise Reject("message_not_an_object", where)
    if "role" in m and "from" not in m:  # some ShareGPT files already use OpenAI's keys
        return message(m, where, max_chars)
    role = _SHAREGPT_ROLES.get(str(m.get("from", "")).strip().lower())
    if role is None:
        raise Reject("unknown_role", f"{where}.from")
    value = m.get("value")
    if role == "function_call":
        try:
            calls = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            raise Reject("bad_tool_call", f"{where}.value", "a function_call value must be JSON") from None
        calls = calls if isinstance(calls, list) else [calls]
        return message({"role": "assistant", "content": None, "tool_calls": calls}, where, max_chars)
    return message({"role": role, "content": value}, where, max_chars)


def tools_of(value, where: str) -> list | None:
    """A tool list (JSON schemas), given as a list or as a JSON string of one."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise Reject("bad_tools", where, "tools must be a JSON list of tool schemas") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise Reject("bad_tools", where)
    return value


# --- shapes ---------------------------------------------------------------------------------------


def openai(obj: dict, max_chars: int) -> Shaped:
    if "messages" not in obj and "prompt" in obj and "completion" in obj:
        prompt = obj["prompt"]
        context = (
            messages_of(prompt, "prompt", max_chars)
            if isinstance(prompt, list)
            else [message({"role": "user", "content": prompt}, "prompt", max_chars)]
        )
        completion = obj["completion"]
        tail = (
            messages_of(completion, "completion", max_chars)
            if isinstance(completion, list)
            else [message({"role": "assistant", "content": completion}, "completion", max_chars)]
        )
        return Shaped(
            "openai", context + tail, tools=tools_of(obj.get("tools"), "tools"), used={"prompt", "completion", "tools"}
        )
    msgs = messages_of(obj.get("messages"), "messages", max_chars)
    return Shaped("openai", msgs, tools=tools_of(obj.get("tools"), "tools"), used={"messages", "tools"})


def sharegpt(obj: dict, max_chars: int) -> Shaped:
    conv = obj.get("conversations")
    if conv is None:
        raise Reject("missing_messages", "conversations")
    if not isinstance(conv, list):
        raise Reject("messages_not_a_list", "conversations")
    msgs = [sharegpt_message(m, f"conversations[{i}]", max_chars) for i, m in enumerate(conv)]
    system = obj.get("system")
    if isinstance(system, str) and system.strip() and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, message({"role": "system", "content": system}, "system", max_chars))
    return Shaped(
        "sharegpt", msgs, tools=tools_of(obj.get("tools"), "tools"), used={"conversations", "system", "tools"}
    )


def alpaca(obj: dict, max_chars: int) -> Shaped:
    instruction = obj.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise Reject("missing_instruction" if instruction is None else "empty_content", "instruction")
    out_key = "output" if "output" in obj else "response"
    if out_key not in obj:
        raise Reject("missing_output", "output")
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        raise Reject("content_not_a_string", "input")
    msgs = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        msgs.append(message({"role": "system", "content": obj["system"]}, "system", max_chars))
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise Reject("messages_not_a_list", "history")
    for i, turn in enumerate(history):
        if not (isinstance(turn, list) and len(turn) == 2):
            raise Reject("bad_history_turn", f"history[{i}]", "each history item is [user, assistant]")
        msgs.append(message({"role": "user", "content": turn[0]}, f"history[{i}][0]", max_chars))
        msgs.append(message({"role": "assistant", "content": turn[1]}, f"history[{i}][1]", max_chars))
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    msgs.append(message({"role": "user", "content": user}, "instruction", max_chars))
    msgs.append(message({"role": "assistant", "content": obj[out_key]}, out_key, max_chars))
    return Shaped("alpaca", msgs, used={"instruction", "input", "output", "response", "system", "history"})


def hh_transcript(text, where: str, max_chars: int) -> list[dict]:
    """ "\\n\\nHuman: ... \\n\\nAssistant: ..." to messages."""
    if not isinstance(text, str):
        raise Reject("content_not_a_string", where)
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if len(parts) < 3 or parts[0].strip() or parts[1] != "Human":
        raise Reject("bad_transcript", where, 'expected "\\n\\nHuman: ... \\n\\nAssistant: ..." turns')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        message({"role": roles[who], "content": said.strip()}, where, max_chars)
        for who, said in zip(parts[1::2], parts[2::2])
    ]


def side(value, where: str, max_chars: int, style: str) -> list[dict]:
    """A preference side: a reply string, one message, or a message list (OpenAI or ShareGPT)."""
    if isinstance(value, str):
        return [message({"role": "assistant", "content": value}, where, max_chars)]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise Reject("content_not_a_string", where)
    one = sharegpt_message if style == "sharegpt" else message
    return [one(m, f"{where}[{i}]", max_chars) for i, m in enumerate(value)]


def split_pair(chosen: list[dict], rejected: list[dict], prompt: list[dict]) -> Shaped:
    """prompt + chosen reply, and the rejected reply: the two sides may repeat the prompt (or hold
    it all, with no prompt given); past their shared turns each must be one assistant reply."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    context, c_tail, r_tail = prompt + chosen[:n], chosen[n:], rejected[n:]
    for name, tail in (("chosen", c_tail), ("rejected", r_tail)):
        if len(tail) != 1 or tail[0]["role"] != "assistant" or tail[0].get("tool_calls"):
            raise Reject(
                "preference_tail_not_one_reply", name, "past the shared turns, each side must be one assistant reply"
            )
    if not context or context[-1]["role"] != "user":
        raise Reject("preference_prompt_must_end_with_user", "prompt")
    if c_tail[0]["content"].strip() == r_tail[0]["content"].strip():
        raise Reject("chosen_equals_rejected", "rejected")
    return Shaped("preference", context + c_tail, rejected=r_tail[0]["content"])


def hh(obj: dict, max_chars: int) -> Shaped:
    return preference(obj, max_chars, transcripts=True)


def preference(obj: dict, max_chars: int, transcripts: bool = False) -> Shaped:
    if "chosen" not in obj or "rejected" not in obj:
        raise Reject("missing_pair", "chosen" if "chosen" not in obj else "rejected")
    c, r = obj["chosen"], obj["rejected"]
    if transcripts:
        shaped = split_pair(hh_transcript(c, "chosen", max_chars), hh_transcript(r, "rejected", max_chars), [])
        shaped.shape, shaped.used = "hh", {"chosen", "rejected"}
        return shaped
    style = "sharegpt" if "conversations" in obj else "openai"
    if style == "sharegpt":
        prompt = sharegpt(obj, max_chars).messages
    elif "prompt" in obj:
        p = obj["prompt"]
        prompt = (
            messages_of(p, "prompt", max_chars)
            if isinstance(p, list)
            else [message({"role": "user", "content": p}, "prompt", max_chars)]
        )
        if isinstance(obj.get("system"), str) and obj["system"].strip():
            prompt.insert(0, message({"role": "system", "content": obj["system"]}, "system", max_chars))
    else:
        prompt = []
    shaped = split_pair(side(c, "chosen", max_chars, style), side(r, "rejected", max_chars, style), prompt)
    shaped.tools = tools_of(obj.get("tools"), "tools")
    shaped.used = {"prompt", "chosen", "rejected", "conversations", "system", "tools"}
    return shaped


def lmsys(obj: dict, max_chars: int) -> Shaped:
    """LMSYS-Chat-1M: {"conversation": [{"role", "content"}], "conversation_id", "language", ...}."""
    return Shaped("lmsys", messages_of(obj.get("conversation"), "conversation", max_chars), used={"conversation"})


def prosocial(obj: dict, max_chars: int) -> Shaped:
    """Prosocial-Dialog rows: {"context": user turn, "response": reply, "dialogue_id", "response_id"}."""
    if "context" not in obj or "response" not in obj:
        raise Reject("missing_messages", "context")
    msgs = [
        message({"role": "user", "content": obj["context"]}, "context", max_chars),
        message({"role": "assistant", "content": obj["response"]}, "response", max_chars),
    ]
    return Shaped("prosocial", msgs, used={"context", "response"})


def detect(obj: dict) -> str:
    """The shape of one record, from the fields it has."""
    if "chosen" in obj and "rejected" in obj:
        c = obj["chosen"]
        return "hh" if isinstance(c, str) and "prompt" not in obj and "\n\nHuman:" in "\n\n" + c else "preference"
    if "messages" in obj or ("prompt" in obj and "completion" in obj):
        return "openai"
    if "conversations" in obj:
        return "sharegpt"
    if "conversation" in obj:
        return "lmsys"
    if "instruction" in obj:
        return "alpaca"
    if "context" in obj and "response" in obj:
        return "prosocial"
    raise Reject("missing_messages", "messages", "no messages, conversations, instruction or chosen/rejected")


SHAPE_READERS = {
    "openai": openai,
    "sharegpt": sharegpt,
    "alpaca": alpaca,
    "preference": preference,
    "hh": hh,
    "lmsys": lmsys,
    "prosocial": prosocial,
}
# Magpie ships in ShareGPT ({"conversations"}) or instruction/response form.
ALIASES = {"magpie": None, "auto": None}


def shape(obj: dict, fmt: str, max_chars: int) -> Shaped:
    name = detect(obj) if fmt in ALIASES else fmt
    if fmt == "magpie" and name not in ("sharegpt", "alpaca"):
        raise Reject("missing_messages", "conversations", "magpie rows have conversations or instruction/response")
    return SHAPE_READERS[name](obj, max_chars)
