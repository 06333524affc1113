"""The OpenAI-compatible API's request and error shapes: what a client may send, and the error
envelope every refusal answers in. OpenAI clients send many optional fields: those that change
what a reply is (logprobs, response_format other than text, n > 1) are refused with a 400 naming
the field; the others this server does not use are ignored. The limits (limits.py) come in the
validation context: parse() applies them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=32000)  # a JSON string, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # null or "" beside tool_calls (an agent loop's assistant turn); text parts are joined.
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _shape(self):
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=4000)
    parameters: dict | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDef


class FunctionName(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionName


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # Refused unless they leave the reply as it is (see _unsupported).
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None

    @model_validator(mode="after")
    def _unsupported(self):
        if self.logprobs or self.top_logprobs is not None:
            field = "logprobs" if self.logprobs else "top_logprobs"
            raise ApiError(400, f"{field}: log probabilities are not supported by this server", field)
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise ApiError(
                400, f"response_format.type: {kind!r} is not supported (only 'text')", "response_format.type"
            )
        if self.n != 1:
            raise ApiError(400, f"n: {self.n} choices asked; this server returns one per request", "n")
        return self

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo):
        limits = (info.context or {}).get("limits")
        if limits is not None:
            check_limits(self, limits)
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @model_validator(mode="after")
    def _tool_choice(self):
        names = {t.function.name for t in self.tools or []}
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(
                f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools "
                f"({', '.join(sorted(names)) or 'none given'})"
            )
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        return self

    @property
    def tool_mode(self) -> tuple[str, str | None]:
        """("none" | "auto" | "forced", the function a forced reply must call, or None for any)."""
        if not self.tools or self.tool_choice == "none":
            return "none", None
        if isinstance(self.tool_choice, NamedToolChoice):
            return "forced", self.tool_choice.function.name
        return ("forced", None) if self.tool_choice == "required" else ("auto", None)


def check_limits(req: ChatRequest, limits) -> None:
    """The request against the server's limits (limits.Limits), each refusal naming its field."""
    if len(req.messages) > limits.messages:
        raise ApiError(400, f"messages: {len(req.messages)} messages, over the limit of {limits.messages}", "messages")
    for i, m in enumerate(req.messages):
        size = len(m.text) + sum(len(c.function.arguments) for c in m.tool_calls or [])
        if size > limits.message_chars:
            where = f"messages.{i}.content"
            raise ApiError(400, f"{where}: {size} characters, over the limit of {limits.message_chars}", where)
    meta = req.metadata or {}
    if len(meta) > limits.metadata_keys:
        raise ApiError(400, f"metadata: {len(meta)} keys, over the limit of {limits.metadata_keys}", "metadata")
    for k, v in meta.items():
        if len(k) > limits.metadata_key_chars or len(v) > limits.metadata_value_chars:
            raise ApiError(
                400,
                f"metadata: keys are at most {limits.metadata_key_chars} characters and values "
                f"{limits.metadata_value_chars} ({k[:64]!r} is over)",
                "metadata",
            )
    if len(req.stops) > limits.stop_sequences or any(not s for s in req.stops):
        raise ApiError(400, f"stop: 1 to {limits.stop_sequences} non-empty sequences", "stop")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value > limits.max_tokens:
            raise ApiError(400, f"{name}: {value}, over the limit of {limits.max_tokens}", name)


def parse(model: type[BaseModel], data: object, limits) -> BaseModel:
    """The request's shape, validated under the limits; the first problem as a 400 naming its field."""
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{loc}: {msg}", loc) from None


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
