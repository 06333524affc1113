"""The OpenAI-compatible API's request and error shapes: what a client may send, and the error
envelope every refusal answers in. OpenAI clients send many optional fields; those this server
does not use are ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = Field(max_length=32000)


class ChatRequest(BaseModel):
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


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    if status >= 500:
        kind = "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
