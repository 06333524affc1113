"""`loraloop serve`: the releases behind an OpenAI-compatible HTTP API (FastAPI on uvicorn), bound
to 127.0.0.1 unless told otherwise.

    GET  /v1/models              one id per route (character) and one per released version
    POST /v1/chat/completions    `model` = a route id: models/routing.json picks stable or canary by
                                 the request's `user`; or <release>@<version> for one version
    POST /v1/feedback            {response_id, reaction: up|down, corrected?} for a reply

Every adapter is loaded once on one base and chosen per request (stages/serve_engine.py); the
character's system prompt from the version's metadata goes in front of the conversation (a client's
own system message is replaced: the adapter was trained under that prompt). routing.json is read
again when it changes, so a rollback or promote takes effect on the next request. Each exchange is
logged (stages/servelog.py): text only for a user who opted in (`metadata: {"opt_in": "true"}`),
counters for everyone; request headers never. With LORALOOP_API_KEY set, a request without
`Authorization: Bearer <key>` gets 401."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import click
import yaml
from pydantic import BaseModel, ConfigDict, Field

from . import release
from .cli import PATH, params_of
from .io import read_json
from .params import Params
from .rules import rule_values
from .servelog import COUNTERS, FEEDBACK, SERVED, DailyLog, read_rows, stamp, utc_now

MONITORED_RULES = ("banned_words", "repetition", "meta_leakage", "language")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = Field(max_length=32000)


class ChatRequest(BaseModel):
    # OpenAI clients send many optional fields; those this server does not use are ignored.
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=100)
    reaction: Literal["up", "down"]
    corrected: str | None = Field(None, min_length=1, max_length=32000)


class Routes:
    """models/routing.json, read again whenever the file changes, and what each model id serves."""

    def __init__(self, routing_file: Path, root: Path, base_hash: str):
        self.file, self.root, self.base_hash = routing_file, root.resolve(), base_hash
        self.seen: tuple | None = None
        self.routing: dict = {}
        self.metadata: dict[Path, dict] = {}

    def current(self) -> dict:
        try:
            st = self.file.stat()
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self.seen:
            self.routing = read_json(self.file) if seen else {}
            self.seen = seen
        return self.routing

    def adapter_dir(self, path: str) -> Path:
        """An adapter path from routing.json, refused if it leads outside the project."""
        p = (self.root / path).resolve()
        if not p.is_relative_to(self.root):
            raise ApiError(500, f"routing.json names an adapter outside the project: {path}")
        return p

    def version_metadata(self, adapter: Path) -> dict:
        if adapter not in self.metadata:
            meta = yaml.safe_load((adapter.parent / "metadata.yaml").read_text(encoding="utf-8"))
            self.metadata[adapter] = meta
        return self.metadata[adapter]

    def pinned(self) -> dict[str, tuple[str, str]]:
        """<release>@<version> (or <route>@<version> for a release with several routes) -> (route,
        version), for every released version not withdrawn."""
        out = {}
        by_release: dict[str, list[str]] = {}
        for rid, e in self.current().items():
            by_release.setdefault(e["release"], []).append(rid)
        for rel_name, routes in by_release.items():
            rel_dir = self.adapter_dir(self.routing[routes[0]]["stable"]["adapter"]).parents[2]
            gone = release.withdrawn(rel_dir)
            for version in release.released_versions(rel_dir):
                if version in gone:
                    continue
                for rid in routes:
                    out[f"{rel_name if len(routes) == 1 else rid}@{version}"] = (rid, version)
        return out

    def resolve(self, model: str, user: str | None) -> dict:
        """What serves this request: route, character, version, rollout, adapter dir, system prompt."""
        routing = self.current()
        if model in routing:
            e = routing[model]
            chosen = release.route(routing, model, user or "")
            rollout = "canary" if e.get("canary") and chosen["version"] == e["canary"]["version"] else "stable"
            rid, version, adapter = model, chosen["version"], self.adapter_dir(chosen["adapter"])
        else:
            pins = self.pinned() if "@" in model else {}
            if model not in pins:
                known = ", ".join(sorted(routing)) or "none (run `dvc repro package` first)"
                raise ApiError(404, f"model {model!r} does not exist; models: {known}", "model", "model_not_found")
            rid, version = pins[model]
            e, rollout = routing[rid], "pinned"
            adapter = self.adapter_dir(
                Path(routing[rid]["stable"]["adapter"]).parents[1].joinpath(version, "adapter").as_posix()
            )
        if e["base_hash"] != self.base_hash:
            raise ApiError(
                409,
                f"{model} runs on base {e['base_hash'][:12]}, this server on {self.base_hash[:12]}: "
                "serve it with that base (--base)",
                "model",
            )
        meta = self.version_metadata(adapter)
        return {
            "route": rid,
            "release": e["release"],
            "lineage": e["lineage"],
            "character": e["character"],
            "version": version,
            "rollout": rollout,
            "adapter": adapter,
            "system_prompt": meta["system_prompts"][e["character"]],
        }


class Recent:
    """The last `size` exchanges by response id, for feedback to find (older ones: the logs)."""

    def __init__(self, size: int = 50_000):
        self.size, self.items = size, OrderedDict()

    def put(self, rid: str, item: dict) -> None:
        self.items[rid] = item
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def get(self, rid: str, root: Path) -> dict | None:
        if rid in self.items:
            return self.items[rid]
        for row in read_rows(root / COUNTERS):
            if row.get("event") == "completion" and row.get("response_id") == rid:
                found = {k: row[k] for k in ("route", "character", "version", "opt_in")}
                if row["opt_in"]:
                    found.update(next((r for r in read_rows(root / SERVED) if r.get("response_id") == rid), {}))
                return found
        return None


def text_of(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True).strip()


def opted_in(req: ChatRequest) -> bool:
    return str((req.metadata or {}).get("opt_in", "")).lower() in ("true", "1", "yes")


def conversation(req: ChatRequest) -> list[dict]:
    msgs = [{"role": m.role, "content": m.content} for m in req.messages if m.role not in ("system", "developer")]
    if not msgs or msgs[-1]["role"] != "user":
        raise ApiError(400, "messages must end with a user message", "messages")
    return msgs


class Server:
    """The state behind the HTTP handlers: engine, routes, rules per lineage, logs."""

    def __init__(self, engine, routes: Routes, params: Params, root: Path, api_key: str | None):
        self.engine, self.routes, self.root, self.api_key = engine, routes, root, api_key
        self.rules = {name: params.lineage(name).rules for name in params.lineages}
        self.default_max_tokens = params.eval.max_new_tokens
        self.log = DailyLog(root)
        self.recent = Recent()
        self.seq = 0

    def check_key(self, authorization: str | None) -> None:
        if not self.api_key:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer <LORALOOP_API_KEY>)", None, "invalid_api_key"
            )

    def job(self, req: ChatRequest):
        """Resolve the request and queue it: (what serves it, prompt ids, token queue, job)."""
        from .chat import prompt_ids
        from .serve_engine import Job

        target = self.routes.resolve(req.model, req.user)
        msgs = conversation(req)
        prompt = prompt_ids(self.engine.tok, [{"role": "system", "content": target["system_prompt"]}, *msgs])
        max_tokens = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        if self.engine.context and len(prompt) + max_tokens > self.engine.context:
            raise ApiError(
                400,
                f"the conversation is {len(prompt)} tokens; with max_tokens {max_tokens} that passes the "
                f"model's context of {self.engine.context}",
                "messages",
                "context_length_exceeded",
            )
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        self.seq += 1
        job = Job(
            prompt=prompt,
            adapter=target["adapter"],
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed if req.seed is not None else self.seq,
            on_token=lambda t: loop.call_soon_threadsafe(out.put_nowait, ("token", t)),
            on_done=lambda exc: loop.call_soon_threadsafe(out.put_nowait, ("done", exc)),
        )
        self.engine.submit(job)
        return target, msgs, prompt, out, job

    def finish(self, req: ChatRequest, target: dict, msgs: list[dict], prompt: list[int], job, t0: float, rid: str):
        """The reply's text, finish reason and usage; logs the exchange."""
        text = text_of(self.engine.tok, job.tokens)
        finish = "stop" if job.tokens and job.tokens[-1] in self.engine.stop else "length"
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(job.tokens),
            "total_tokens": len(prompt) + len(job.tokens),
        }
        when, opt_in = utc_now(), opted_in(req)
        rules = rule_values(text, self.rules[target["lineage"]], msgs, target["character"])
        counters = {
            "event": "completion",
            "response_id": rid,
            "timestamp": stamp(when),
            **{k: target[k] for k in ("route", "release", "lineage", "character", "version", "rollout")},
            "opt_in": opt_in,
            "stream": req.stream,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
            "finish_reason": finish,
            "reply_chars": len(text),
            "rules": {k: round(rules[k], 4) for k in MONITORED_RULES if k in rules},
            **usage,
        }
        self.log.append(COUNTERS, counters, when)
        kept = {k: target[k] for k in ("route", "character", "version")} | {"opt_in": opt_in}
        if opt_in:
            record = {
                "response_id": rid,
                "character_id": target["character"],
                "dataset_source": "served",
                "timestamp": stamp(when),
                "opt_in": True,
                "user_id": req.user,
                "messages": [*msgs, {"role": "assistant", "content": text}],
                "version": target["version"],
                "route": target["route"],
            }
            self.log.append(SERVED, record, when)
            kept.update({"messages": record["messages"], "user_id": req.user})
        self.recent.put(rid, kept)
        return text, finish, usage

    def feedback(self, fb: FeedbackRequest) -> dict:
        ex = self.recent.get(fb.response_id, self.root)
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
        *context, reply = ex["messages"]
        row = {
            "response_id": fb.response_id,
            "character_id": ex["character"],
            "dataset_source": "served_feedback",
            "timestamp": stamp(when),
            "opt_in": True,
            "user_id": ex.get("user_id"),
            "messages": context,
            "response": reply["content"],
            "feedback": "good" if fb.reaction == "up" else "bad",
            "version": ex["version"],
        }
        if fb.corrected is not None:
            row["corrected"] = fb.corrected
        self.log.append(FEEDBACK, row, when)
        return {"recorded": "feedback"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    if status >= 500:
        kind = "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
        return JSONResponse(error_body(400, f"{loc}: {err['msg']}", loc), status_code=400)

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
        t0 = time.perf_counter()
        target, msgs, prompt, out, job = server.job(req)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        head = {"id": rid, "created": created, "model": req.model, "system_fingerprint": target["version"]}
        if not req.stream:
            while (item := await out.get())[0] != "done":
                pass
            if item[1] is not None:
                raise ApiError(500, f"generation failed: {type(item[1]).__name__}")
            text, finish, usage = server.finish(req, target, msgs, prompt, job, t0, rid)
            return {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": usage,
            }
        return StreamingResponse(
            stream(server, req, target, msgs, prompt, out, job, t0, head), media_type="text/event-stream"
        )

    return app


async def stream(server: Server, req, target, msgs, prompt, out, job, t0, head):
    """Server-sent events: the reply's new text as its tokens come, then finish_reason (and usage
    when stream_options.include_usage), then [DONE]."""

    def event(delta: dict, finish: str | None = None, **extra) -> str:
        chunk = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps({**chunk, **extra}, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    ids: list[int] = []
    sent = ""
    while True:
        kind, value = await out.get()
        if kind == "done":
            break
        ids.append(value)
        text = text_of(server.engine.tok, ids)
        if not text.endswith("\ufffd") and text.startswith(sent) and len(text) > len(sent):
            yield event({"content": text[len(sent) :]})
            sent = text
    if value is not None:
        yield f"data: {json.dumps(error_body(500, f'generation failed: {type(value).__name__}'))}\n\n"
        return
    text, finish, usage = server.finish(req, target, msgs, prompt, job, t0, head["id"])
    if text != sent and text.startswith(sent):
        yield event({"content": text[len(sent) :]})
    yield event({}, finish)
    if (req.stream_options or {}).get("include_usage"):
        yield f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def vllm_command(routes: Routes, base_dir: Path, host: str, port: int) -> list[str]:
    """vLLM's OpenAI server with every routed adapter: route ids serve the stable version (vLLM has
    no per-user canary split), <release>@<version> ids every version in service."""
    from .vllm_lora import adapter_config, adapter_rank, max_lora_rank, problems

    modules: dict[str, Path] = {}
    for rid, e in sorted(routes.current().items()):
        modules[rid] = routes.adapter_dir(e["stable"]["adapter"])
        for side in ("stable", "canary"):
            if e.get(side):
                pin = f"{e['release']}@{e[side]['version']}"
                modules[pin] = routes.adapter_dir(e[side]["adapter"])
    if not modules:
        raise click.ClickException("models/routing.json routes nothing yet: run `dvc repro package` first")
    ranks = []
    for name, adapter in modules.items():
        cfg = adapter_config(adapter)
        bad = problems(cfg)
        if bad:
            raise click.ClickException(f"{name} ({adapter}): vLLM cannot serve it: {'; '.join(bad)}")
        ranks.append(adapter_rank(cfg))
    cmd = ["vllm", "serve", str(base_dir), "--host", host, "--port", str(port), "--enable-lora"]
    # Paths relative to the project, where the command runs.
    cmd += ["--lora-modules", *(f"{n}={p.relative_to(routes.root)}" for n, p in modules.items())]
    cmd += ["--max-lora-rank", str(max_lora_rank(ranks)), "--max-loras", str(len(set(modules.values())))]
    return cmd


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--routing", "routing_file", type=PATH, default=Path("models/routing.json"), show_default=True)
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=click.FloatRange(0, 1000))
@click.option(
    "--log-root",
    type=PATH,
    default=None,
    help="Where logs/serve and data/raw/served go (default: the project; a benchmark logs elsewhere).",
)
@click.pass_context
def cli(ctx, host, port, base_dir, routing_file, engine, batch_size, batch_wait_ms, log_root):
    """Serve the releases over an OpenAI-compatible API (routing.json decides who gets what)."""
    params = params_of(ctx)
    root = Path.cwd()
    base_hash = read_json(base_dir / "base.json")["hash"]
    routes = Routes(routing_file, root, base_hash)
    if engine == "vllm":
        import shutil

        cmd = vllm_command(routes, base_dir, host, port)
        if shutil.which("vllm") is None:
            click.echo("vllm is not installed here (pip install vllm, on a GPU machine); its command would be:")
            click.echo(" ".join(cmd))
            raise SystemExit(1)
        os.execvp(cmd[0], cmd)
    import uvicorn

    from .serve_engine import Engine

    key = os.environ.get("LORALOOP_API_KEY") or None
    model_engine = Engine(base_dir, batch_size, batch_wait_ms / 1000)
    server = Server(model_engine, routes, params, log_root or root, key)
    click.echo(f"loraloop serve: http://{host}:{port}/v1 ({', '.join(sorted(routes.current())) or 'no routes yet'})")
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning", access_log=False)
