"""The serving logic behind the HTTP routes (app.py): a request resolved to the version that
serves it and queued on the engine, its reply logged when it ends (text only for a user who opted
in, counters for everyone), feedback on a reply, and the API key check."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..judge.rules import rule_values
from ..lm.tool_calls import parse as parse_calls
from ..lm.tool_calls import to_openai, written
from ..params import Params
from .logs import COUNTERS, FEEDBACK, SERVED, DailyLog, Exchanges, stamp, utc_now
from .protocol import ApiError, ChatRequest, FeedbackRequest
from .routes import Routes

MONITORED_RULES = ("banned_words", "repetition", "meta_leakage", "language", "tool_call_valid")


def text_of(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True).strip()


def opted_in(req: ChatRequest) -> bool:
    return str((req.metadata or {}).get("opt_in", "")).lower() in ("true", "1", "yes")


def conversation(req: ChatRequest) -> list[dict]:
    """The request's turns in collect's record schema, without system or developer messages (the
    version's own system prompt goes in front: the adapter was trained under it). They end with
    the user's turn or a tool result, and a tool result answers a call made before it."""
    msgs, called = [], set()
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            continue
        turn = {"role": m.role, "content": m.text}
        if m.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in m.tool_calls
            ]
            called |= {c.id for c in m.tool_calls}
        if m.role == "tool":
            if m.tool_call_id not in called:
                raise ApiError(
                    400,
                    f"messages[{i}]: tool_call_id {m.tool_call_id!r} answers no tool call made before it",
                    f"messages[{i}].tool_call_id",
                )
            turn["tool_call_id"] = m.tool_call_id
        msgs.append(turn)
    if not msgs or msgs[-1]["role"] not in ("user", "tool"):
        raise ApiError(400, "messages must end with a user message or a tool result", "messages")
    return msgs


def tools_of(req: ChatRequest) -> list[dict] | None:
    """The request's tools as the chat template takes them, each parameters schema checked."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    if not req.tools:
        return None
    out, seen = [], set()
    for i, t in enumerate(req.tools):
        tool = t.model_dump(exclude_none=True)
        fn = tool["function"]
        if fn["name"] in seen:
            raise ApiError(400, f"tools[{i}]: a second tool named {fn['name']!r}", f"tools[{i}].function.name")
        seen.add(fn["name"])
        if "parameters" in fn:
            try:
                validators.validator_for(fn["parameters"]).check_schema(fn["parameters"])
            except SchemaError as exc:
                where = f"tools[{i}].function.parameters"
                raise ApiError(400, f"{where} is not a JSON schema: {exc.message}", where) from None
        out.append(tool)
    return out


@dataclass
class Prepared:
    target: dict
    messages: list[dict]
    tools: list[dict] | None
    prompt: list[int]
    max_tokens: int
    t0: float


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence in it (OpenAI returns the reply without it)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class Pending:
    """A request queued on the engine: what serves it, its turns and prompt, the engine's job, the
    queue its tokens and its end arrive on ("token", id) ... ("done", error or None), its start."""

    target: dict
    messages: list[dict]
    tools: list[dict] | None
    prompt: list[int]
    job: object  # engine.Job
    events: asyncio.Queue
    t0: float


@dataclass
class Reply:
    """The reply: its text (every call written out, as generated), what the client gets (content
    beside the valid calls, as OpenAI's tool_calls), why other call blocks stayed text."""

    text: str
    finish_reason: str
    usage: dict
    content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    extra_calls: int = 0  # valid calls past the first when parallel_tool_calls is false: not returned


class Server:
    """The state behind the HTTP handlers: engine, routes, rules per lineage, logs."""

    def __init__(self, engine, routes: Routes, params: Params, root: Path, api_key: str | None):
        self.engine, self.routes, self.root, self.api_key = engine, routes, root, api_key
        self.rules = {name: params.lineage(name).rules for name in params.lineages}
        self.default_max_tokens = params.eval.max_new_tokens
        self.log = DailyLog(root)
        self.recent = Exchanges(root)
        self.seq = 0

    def check_key(self, authorization: str | None) -> None:
        if not self.api_key:
            return
        # RFC 7235: the scheme is case-insensitive; a bare key (no scheme) is not a credential.
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer <LORALOOP_API_KEY>)", None, "invalid_api_key"
            )

    def prompt_of(self, req: ChatRequest, target: dict, msgs: list[dict], tools: list | None) -> tuple[list[int], int]:
        """The prompt's token ids (rendered as training rendered it: the template's tools, or the
        fallback's) and the reply's token budget, refused past the model's context. With
        tool_choice none the tools are not shown: the reply is text."""
        from ..lm.chat import prompt_ids

        shown = tools if req.tool_mode[0] != "none" else None
        prompt = prompt_ids(self.engine.tok, [{"role": "system", "content": target["system_prompt"]}, *msgs], shown)
        max_tokens = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        if self.engine.context and len(prompt) + max_tokens > self.engine.context:
            raise ApiError(
                400,
                f"the conversation is {len(prompt)} tokens; with max_tokens {max_tokens} that passes the "
                f"model's context of {self.engine.context}",
                "messages",
                "context_length_exceeded",
            )
        return prompt, max_tokens

    def prepare(self, req: ChatRequest) -> Prepared:
        """What serves the request and its prompt, tokenized (CPU work: the app runs it in a
        thread, off the event loop)."""
        t0 = time.perf_counter()
        target = self.routes.resolve(req.model, req.user)
        msgs, tools = conversation(req), tools_of(req)
        prompt, max_tokens = self.prompt_of(req, target, msgs, tools)
        return Prepared(target, msgs, tools, prompt, max_tokens, t0)

    def submit(self, req: ChatRequest, ready: Prepared) -> Pending:
        """Queue the prepared request on the engine (from the event loop)."""
        from .engine import Job

        mode, name = req.tool_mode
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        self.seq += 1
        job = Job(
            prompt=ready.prompt,
            adapter=ready.target["adapter"],
            max_tokens=ready.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed if req.seed is not None else self.seq,
            on_token=lambda t: loop.call_soon_threadsafe(events.put_nowait, ("token", t)),
            on_done=lambda exc: loop.call_soon_threadsafe(events.put_nowait, ("done", exc)),
            forced=(ready.tools, name) if mode == "forced" else None,
            stops=req.stops,
        )
        self.engine.submit(job)
        return Pending(ready.target, ready.messages, ready.tools, ready.prompt, job, events, ready.t0)

    def finish(self, req: ChatRequest, p: Pending, response_id: str, cancelled: bool = False) -> Reply:
        """The reply's text (up to a stop sequence), finish reason and usage; logs the exchange.
        `cancelled`: the client left before the reply was whole."""
        tokens = list(p.job.tokens)
        text, stopped = cut_at_stop(text_of(self.engine.tok, tokens), req.stops)
        finish = "stop" if stopped or tokens and tokens[-1] in self.engine.stop else "length"
        if cancelled and finish == "length" and len(tokens) < p.job.max_tokens:
            finish = "cancelled"  # halted before its end (a reply that ended anyway keeps its reason)
        usage = {
            "prompt_tokens": len(p.prompt),
            "completion_tokens": len(tokens),
            "total_tokens": len(p.prompt) + len(tokens),
        }
        reply = Reply(text, finish, usage, content=text)
        if req.tool_mode[0] != "none" and finish != "cancelled":
            parsed = parse_calls(text, p.tools)
            calls = parsed.calls if req.parallel_tool_calls else parsed.calls[:1]
            reply.extra_calls, reply.problems = len(parsed.calls) - len(calls), parsed.problems
            if calls:
                reply.tool_calls = to_openai(calls, response_id)
                reply.content, reply.finish_reason = parsed.content or None, "tool_calls"
        self.log_exchange(req, p, response_id, reply)
        return reply

    def log_exchange(self, req: ChatRequest, p: Pending, response_id: str, reply: Reply) -> None:
        """Counters for every exchange; for a user who opted in, the conversation too, in collect's
        record schema (data/raw/served/, a collect source)."""
        target, when, opt_in = p.target, utc_now(), opted_in(req)
        rules = rule_values(reply.text, self.rules[target["lineage"]], p.messages, target["character"], p.tools)
        counters = {
            "event": "completion",
            "response_id": response_id,
            "timestamp": stamp(when),
            **{k: target[k] for k in ("route", "release", "lineage", "character", "version", "rollout")},
            "opt_in": opt_in,
            "stream": req.stream,
            "latency_ms": round((time.perf_counter() - p.t0) * 1000, 1),
            "finish_reason": reply.finish_reason,
            "reply_chars": len(reply.text),
            "rules": {k: round(rules[k], 4) for k in MONITORED_RULES if k in rules},
            "tool_choice": req.tool_mode[0],
            "tool_calls": len(reply.tool_calls),
            "tool_call_problems": len(reply.problems),
            "extra_tool_calls": reply.extra_calls,
            **reply.usage,
            # drafted with the release's heads (serve --speculative): how many drafts were kept
            **({"speculative": p.job.speculative} if p.job.speculative else {}),
        }
        self.log.append(COUNTERS, counters, when)
        kept = {k: target[k] for k in ("route", "character", "version")} | {"opt_in": opt_in}
        if opt_in:
            answer = {"role": "assistant", "content": reply.content}
            if reply.finish_reason == "cancelled":
                answer["weight"] = 0  # a cut reply: kept for the record, never trained on
            if reply.tool_calls:
                answer["tool_calls"] = reply.tool_calls
            record = {
                "response_id": response_id,
                "character_id": target["character"],
                "dataset_source": "served",
                "timestamp": stamp(when),
                "opt_in": True,
                "user_id": req.user,
                "messages": [*p.messages, answer],
                **({"tools": p.tools} if p.tools else {}),
                "version": target["version"],
                "route": target["route"],
            }
            where = self.log.append(SERVED, record, when)
            kept.update({"messages": record["messages"], "user_id": req.user, "tools": p.tools, "where": where})
        self.recent.put(response_id, kept)

    def feedback(self, fb: FeedbackRequest) -> dict:
        """A reaction to a reply served here: counted for everyone, and for a user who opted in a
        feedback record (good, or bad with the correction if given) for the next round."""
        ex = self.recent.get(fb.response_id)
        if ex is None:
            raise ApiError(404, f"no response {fb.response_id!r} was served here", "response_id")
        when = utc_now()
        self.log.append(
            COUNTERS,
            {
                "event": "feedback",
                "response_id": fb.response_id,
                "timestamp": stamp(when),
                **{k: ex[k] for k in ("route", "character", "version", "opt_in")},
                "reaction": fb.reaction,
                "corrected": fb.corrected is not None,
            },
            when,
        )
        if not ex["opt_in"]:
            return {"recorded": "counter"}
        self.log.append(FEEDBACK, feedback_record(fb, ex, when), when)
        return {"recorded": "feedback"}


def feedback_record(fb: FeedbackRequest, ex: dict, when) -> dict:
    """An opted-in user's reaction in collect's feedback shape."""
    *context, reply = ex["messages"]
    row = {
        "response_id": fb.response_id,
        "character_id": ex["character"],
        "dataset_source": "served_feedback",
        "timestamp": stamp(when),
        "opt_in": True,
        "user_id": ex.get("user_id"),
        "messages": context,
        "response": written(reply),
        "feedback": "good" if fb.reaction == "up" else "bad",
        "version": ex["version"],
        **({"tools": ex["tools"]} if ex.get("tools") else {}),
    }
    if fb.corrected is not None:
        row["corrected"] = fb.corrected
    return row
