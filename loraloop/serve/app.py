"""`loraloop serve`'s HTTP routes (FastAPI), an OpenAI-compatible API over the releases:

    GET  /v1/models              one id per route (character) and one per released version
    POST /v1/chat/completions    `model` = a route id: models/routing.json picks stable or canary by
                                 the request's `user`; or <release>@<version> for one version
    POST /v1/feedback            {response_id, reaction: up|down, corrected?} for a reply

    GET  /v1/models/{id}         one of them (the client's models.retrieve)

The logic behind them is server.py's; the shapes are protocol.py's, the limits limits.py's. With
LORALOOP_API_KEY set, a request without `Authorization: Bearer <key>` gets 401, before its body is
read. Parsing and tokenizing run in threads, off the event loop. Request headers are never logged."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from ..lm.tool_calls import OPEN
from .limits import Limits, parse_json, read_body
from .protocol import ApiError, ChatRequest, FeedbackRequest, error_body, parse
from .server import Pending, Server, text_of


def create_app(server: Server, limits: Limits | None = None):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    limits = limits or Limits()
    app = FastAPI(title="loraloop", docs_url=None, redoc_url=None, openapi_url=None)
    answer_errors_in_the_envelope(app)

    async def body_of(request: Request, model):
        """Authentication first (before a byte of the body is read), then the body within the
        limits, parsed and validated off the event loop."""
        server.check_key(request.headers.get("authorization"))
        body = await read_body(request, limits)
        return await asyncio.to_thread(lambda: parse(model, parse_json(body, limits), limits))

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request.headers.get("authorization"))
        return {"object": "list", "data": await asyncio.to_thread(server.routes.models)}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        server.check_key(request.headers.get("authorization"))
        found = [m for m in await asyncio.to_thread(server.routes.models) if m["id"] == model_id]
        if not found:
            raise ApiError(404, f"model {model_id!r} does not exist", "model", "model_not_found")
        return found[0]

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        fb = await body_of(request, FeedbackRequest)
        return await asyncio.to_thread(server.feedback, fb)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await body_of(request, ChatRequest)
        pending = server.submit(req, await asyncio.to_thread(server.prepare, req))
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": pending.target["version"],
        }
        if req.stream:
            return StreamingResponse(stream(server, req, pending, head), media_type="text/event-stream")
        exc = await until_done(pending, request)
        if exc is CANCELLED:
            await cancel(server, req, pending, head["id"])
            return JSONResponse(error_body(499, "the client closed the request"), status_code=499)
        if exc is not None:
            raise ApiError(500, f"generation failed: {type(exc).__name__}")
        reply = server.finish(req, pending, head["id"])
        message = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": reply.usage}

    return app


def answer_errors_in_the_envelope(app) -> None:
    """Every refusal in OpenAI's error envelope: ours, unknown paths and methods, and shapes."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        return JSONResponse(error_body(400, f"{loc}: {err['msg']}", loc), status_code=400)


CANCELLED = object()
_DRAINING: set = set()  # cancelled jobs' log tasks, held until they end


async def cancel(server: Server, req: ChatRequest, pending: Pending, response_id: str) -> None:
    """The client left: its job halts at the next decode step (freeing its row of the batch); once
    it has, the exchange is logged as cancelled with the tokens it did make."""
    pending.job.halted = True
    while (await pending.events.get())[0] != "done":
        pass
    server.finish(req, pending, response_id, cancelled=True)


async def until_done(pending: Pending, request) -> BaseException | object | None:
    """Waits for the job (a non-streamed reply) or for the client to leave (the next ASGI message
    after the body is http.disconnect): the job's exception, None, or CANCELLED."""
    left = asyncio.ensure_future(request.receive())
    try:
        while True:
            event = asyncio.ensure_future(pending.events.get())
            await asyncio.wait({event, left}, return_when=asyncio.FIRST_COMPLETED)
            if not event.done():
                event.cancel()
                if left.result().get("type") == "http.disconnect":
                    return CANCELLED
                left = asyncio.ensure_future(request.receive())
                continue
            kind, value = event.result()
            if kind == "done":
                return value
    finally:
        left.cancel()


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def visible(text: str, tools: bool, stops: list[str]) -> str:
    """What of the text so far can be streamed as content: nothing from a stop sequence on, and
    with tools nothing from a call block on (a call goes out as tool_calls); nor the end of the
    text while it may be the start of either."""
    marks = [*stops, OPEN] if tools else stops
    cuts = [i for i in (text.find(m) for m in marks) if i >= 0]
    if cuts:
        return text[: min(cuts)]
    held = max((k for m in marks for k in range(len(m) - 1, 0, -1) if text.endswith(m[:k])), default=0)
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
    """Server-sent events: the reply's new text as its tokens come (up to a tool call or a stop
    sequence), then the rest of its content and its tool calls, finish_reason (and usage when
    stream_options.include_usage), then [DONE]. A client that leaves halts its job at the next
    decode step, and the exchange is logged as cancelled."""

    def event(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

    done = False
    try:
        yield event({"role": "assistant", "content": ""})
        ids: list[int] = []
        sent, tools = "", req.tool_mode[0] != "none"
        while True:
            kind, value = await pending.events.get()
            if kind == "done":
                break
            ids.append(value)
            text = visible(text_of(server.engine.tok, ids), tools, req.stops)
            if not text.endswith("\ufffd") and text.startswith(sent) and len(text) > len(sent):
                yield event({"content": text[len(sent) :]})
                sent = text
        done = True
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
    finally:
        if not done:  # the client left (the response was cancelled) before the reply was whole
            task = asyncio.get_running_loop().create_task(cancel(server, req, pending, head["id"]))
            _DRAINING.add(task)
            task.add_done_callback(_DRAINING.discard)
