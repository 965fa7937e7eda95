"""Typed request models of both faces (what a route may read from a request).

Bodies are validated with :func:`faas_llm.types.parse` (a bad field -> 400 naming it);
query strings go through the small parsers here, which raise the OpenWhisk messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from faas_llm.errors import RequestError
from faas_llm.types import KeyValue, Scaling

# --- OpenWhisk ------------------------------------------------------------------------

LIST_LIMIT_DEFAULT = 30
LIST_LIMIT_MAX = 200


class LimitsPatch(BaseModel):
    """``limits`` of a PUT: any field left out takes the default (or the stored value on update)."""

    model_config = ConfigDict(extra="forbid")

    timeout: int | None = None
    memory: int | None = None
    logs: int | None = None
    concurrency: int | None = None


class ActionPut(BaseModel):
    """Body of ``PUT /api/v1/namespaces/{ns}/actions/{name}``.

    Unknown top-level fields are ignored, as OpenWhisk does (clients send ``name`` and
    ``namespace`` back); ``exec`` is checked by the action service (its kind first).
    """

    model_config = ConfigDict(extra="ignore")

    exec: dict[str, Any] | None = None
    limits: LimitsPatch | None = None
    parameters: list[KeyValue] | None = None
    annotations: list[KeyValue] | None = None
    scaling: Scaling | None = None
    version: str | None = Field(None, max_length=64)
    publish: bool | None = None


def flag(args: Mapping[str, str], name: str) -> bool:
    value = args.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", ""):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise RequestError(f"The parameter '{name}' must be true or false, got {value!r}.")


#: the largest ``skip``: OpenWhisk parses it as a 32-bit Int (a larger value is a 400 there too); Redis
#: ranges past it would overflow its 64-bit indexes
SKIP_MAX = 2**31 - 1
#: the largest timestamp (``since``, ``upto``: epoch milliseconds, a 64-bit integer in Redis)
MILLIS_MAX = 2**63 - 1


def _non_negative(args: Mapping[str, str], name: str, default: int, maximum: int = MILLIS_MAX) -> int:
    value = args.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise RequestError(f"The value '{value}' is not an integer for '{name}'.") from None
    if number < 0:
        raise RequestError(f"The value '{value}' is not a non-negative integer for '{name}'.")
    if number > maximum:
        raise RequestError(f"The value '{value}' is out of range for '{name}' (at most {maximum}).")
    return number


class InvokeQuery(BaseModel):
    blocking: bool = False
    result: bool = False
    timeout_ms: int | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str], max_wait_ms: int) -> InvokeQuery:
        timeout = args.get("timeout")
        timeout_ms: int | None = None
        if timeout is not None:
            message = f"Timeout must be number of milliseconds up to {max_wait_ms}."
            try:
                timeout_ms = int(timeout)
            except ValueError:
                raise RequestError(message) from None
            if not 1 <= timeout_ms <= max_wait_ms:
                raise RequestError(message)
        return cls(blocking=flag(args, "blocking"), result=flag(args, "result"), timeout_ms=timeout_ms)


class ListQuery(BaseModel):
    """``limit`` (default 30, 0 = the maximum, at most 200), ``skip``, ``count``."""

    limit: int = LIST_LIMIT_DEFAULT
    skip: int = 0
    count: bool = False

    @staticmethod
    def _limit(args: Mapping[str, str], collection: str) -> int:
        limit = _non_negative(args, "limit", LIST_LIMIT_DEFAULT)
        if limit > LIST_LIMIT_MAX:
            raise RequestError(f"The value '{limit}' is not in the range of 0 to {LIST_LIMIT_MAX} for {collection}.")
        return limit or LIST_LIMIT_MAX

    @classmethod
    def from_args(cls, args: Mapping[str, str], collection: str = "actions") -> ListQuery:
        return cls(limit=cls._limit(args, collection), skip=_non_negative(args, "skip", 0, SKIP_MAX),
                   count=flag(args, "count"))


class ActivationListQuery(ListQuery):
    name: str | None = None
    since: int | None = None
    upto: int | None = None
    docs: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, str], collection: str = "activations") -> ActivationListQuery:
        since = args.get("since")
        upto = args.get("upto")
        return cls(
            limit=cls._limit(args, collection), skip=_non_negative(args, "skip", 0, SKIP_MAX),
            count=flag(args, "count"),
            name=args.get("name") or None, docs=flag(args, "docs"),
            since=None if since is None else _non_negative(args, "since", 0),
            upto=None if upto is None else _non_negative(args, "upto", 0),
        )


# --- OpenAI ---------------------------------------------------------------------------


StopString = Annotated[str, Field(min_length=1)]


class _OpenAIModel(BaseModel):
    # OpenAI clients send many optional fields; unknown ones are ignored (as OpenAI-compatible
    # servers do), known ones are type-checked.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_OpenAIModel):
    include_usage: bool = False


class SamplingRequest(_OpenAIModel):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=131_072)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
        None, description="a stop string or up to 4 of them"
    )
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: Literal[1] = Field(1, description="only one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] = Field(description="one prompt (a list of exactly one string is accepted)")
    echo: bool = False

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise RequestError("prompt: exactly one prompt per request is supported")
        return self.prompt[0]


class OpenAITextPart(_OpenAIModel):
    type: Literal["text"]
    text: str


class OpenAIChatMessage(_OpenAIModel):
    """A message as an OpenAI client sends it: unknown fields ignored (``tool_calls``, ``refusal``, ...),
    ``content`` may be null (an assistant turn that only called tools). The runtime's strict contract for
    a run's messages is :class:`faas_llm.genparams.ChatMessage`; :func:`gateway.openai_mapping.chat_params`
    flattens these into it."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[OpenAITextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    messages: list[OpenAIChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=131_072)

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
