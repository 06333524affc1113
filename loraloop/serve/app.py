"""`loraloop serve`'s HTTP routes (FastAPI), an OpenAI-compatible API over the releases:

    GET  /v1/models              one id per route (character) and one per released version
    POST /v1/chat/completions    `model` = a route id: models/routing.json picks stable or canary by
                                 the request's `user`; or <release>@<version> for one version
    POST /v1/feedback            {response_id, reaction: up|down, corrected?} for a reply

The logic behind them is server.py's; the shapes are protocol.py's. With LORALOOP_API_KEY set, a
request without `Authorization: Bearer <key>` gets 401. Request headers are never logged."""

from __future__ import annotations

import json
import time
import uuid

from ..lm.tool_calls import OPEN
from .protocol import ApiError, ChatRequest, FeedbackRequest, error_body
from .server import Pending, Server, text_of


def create_app(server: Server):
    from fastapi import FastAPI, Header, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="loraloop", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        msg = err["msg"].removeprefix("Value error, ")
        return JSONResponse(error_body(400, f"{loc}: {msg}", loc), status_code=400)

    @app.get("/v1/models")
    async def models(authorization: str | None = Header(None)):
        server.check_key(authorization)
        ids = sorted(server.routes.current()) + sorted(server.routes.pinned())
        return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "loraloop"} for i in ids]}

    @app.post("/v1/feedback")
    async def feedback(fb: FeedbackRequest, authorization: str | None = Header(None)):
        server.check_key(authorization)
        return server.feedback(fb)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, authorization: str | None = Header(None)):
        server.check_key(authorization)
        pending = server.submit(req)
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": pending.target["version"],
        }
        if req.stream:
            return StreamingResponse(stream(server, req, pending, head), media_type="text/event-stream")
        while (item := await pending.events.get())[0] != "done":
            pass
        if item[1] is not None:
            raise ApiError(500, f"generation failed: {type(item[1]).__name__}")
        reply = server.finish(req, pending, head["id"])
        message = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": reply.usage,
        }

    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def visible(text: str, tools: bool) -> str:
    """What of the text so far can be streamed as content: with tools, nothing from a call block
    on (nor a piece of its opening tag at the end), since a call goes out as tool_calls."""
    if not tools:
        return text
    cut = text.find(OPEN)
    if cut >= 0:
        return text[:cut]
    held = next((k for k in range(len(OPEN) - 1, 0, -1) if text.endswith(OPEN[:k])), 0)
    return text[: len(text) - held]


def tool_call_deltas(calls: list[dict]) -> list[dict]:
    """OpenAI's streamed form of the calls: per call its id, type and name, then its arguments."""
    out = []
    for i, c in enumerate(calls):
        fn = c["function"]
        out.append(
            {
                "tool_calls": [
                    {"index": i, "id": c["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}
                ]
            }
        )
        out.append({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
    return out


async def stream(server: Server, req: ChatRequest, pending: Pending, head: dict):
    """Server-sent events: the reply's new text as its tokens come (up to a tool call), then the
    rest of its content and its tool calls, finish_reason (and usage when
    stream_options.include_usage), then [DONE]."""

    def event(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

    yield event({"role": "assistant", "content": ""})
    ids: list[int] = []
    sent, tools = "", req.tool_mode[0] != "none"
    while True:
        kind, value = await pending.events.get()
        if kind == "done":
            break
        ids.append(value)
        text = visible(text_of(server.engine.tok, ids), tools)
        if not text.endswith("\ufffd") and text.startswith(sent) and len(text) > len(sent):
            yield event({"content": text[len(sent) :]})
            sent = text
    if value is not None:
        yield sse(error_body(500, f"generation failed: {type(value).__name__}"))
        return
    reply = server.finish(req, pending, head["id"])
    content = reply.content or ""
    if content != sent and content.startswith(sent):
        yield event({"content": content[len(sent) :]})
    for delta in tool_call_deltas(reply.tool_calls):
        yield event(delta)
    yield event({}, reply.finish_reason)
    if (req.stream_options or {}).get("include_usage"):
        yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": reply.usage})
    yield "data: [DONE]\n\n"
