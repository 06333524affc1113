"""What one request may hold, checked before any of it is trusted: the body's size (read in
chunks, so a client cannot make the server hold more), UTF-8, JSON and its nesting depth, then
the shape (protocol.py) with these limits: message count and length, metadata keys and lengths,
stop sequences, tokens. `loraloop serve --max-body-mb ...` sets them; README lists the defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .protocol import ApiError


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 4 * 1024 * 1024
    messages: int = 256
    message_chars: int = 32_000
    depth: int = 64  # JSON nesting: a tool's parameters schema nests a few levels, never 64
    metadata_keys: int = 16  # OpenAI's documented metadata limits
    metadata_key_chars: int = 64
    metadata_value_chars: int = 512
    stop_sequences: int = 4
    max_tokens: int = 4096


async def read_body(request, limits: Limits) -> bytes:
    """The request's body, refused (413) past limits.body_bytes whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.body_bytes:
        raise too_large(limits)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.body_bytes:
            raise too_large(limits)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limits: Limits) -> ApiError:
    return ApiError(413, f"the request body is over {limits.body_bytes} bytes", None, "request_too_large")


def parse_json(body: bytes, limits: Limits) -> object:
    """The body as JSON: a 400 in the error envelope for bytes that are not UTF-8, JSON that does
    not parse (with its line and column) or nests deeper than limits.depth."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 (byte {exc.start})", None, "invalid_json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            f"the request body is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            None,
            "invalid_json",
        ) from None
    except RecursionError:
        data = None
    if data is None and text.strip() != "null" or nesting(data) > limits.depth:
        raise ApiError(400, f"the request body nests deeper than {limits.depth} levels", None, "invalid_json")
    return data


def nesting(data: object) -> int:
    """How deep lists and objects nest (iteratively: a deep value cannot exhaust the stack)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            todo.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return deepest
