"""The contract between the invoker (and the migration coordinator) and the action runtime.

The runtime speaks OpenWhisk's action protocol over HTTP/1.1, honours Knative's runtime
contract, and adds two migration routes::

    POST /init     InitRequest {value: InitValue}           -> InitReply; 403 on a second init
    POST /run      RunRequest {value, namespace, ...}       -> the result object (RunResult for a
                                                               generation), 200 {error} for an
                                                               application error, 502 {error} else;
                   value.stream true                        -> NDJSON: TokenEvent* TextEvent?
                                                               then ResultEvent | ErrorEvent
    POST /         Knative's single entry point: {init?, value, ...} as /run, or bare parameters
    GET  /ready    200 once initialised, 503 before         GET /health  HealthReply, always 200
    POST /export   ExportRequest -> ExportSnapshot (stop false) | ExportReply (the run ends with
                   finish_reason ``migrated`` and its ``state``); 404 no such run, 409 it ended first
    POST /prefill  PrefillRequest -> PrefillReply

Every error body is :class:`ErrorBody`. Who does what with this module:

- the runtime validates what it receives with the request models (unknown envelope fields are
  ignored, known ones typed strictly) and builds its replies and stream events with them;
- the invoker, the coordinator and the hand-off build requests with the ``*_body`` functions
  (plain dicts behind typed signatures: the runtime validates, and ``/run`` is on the warm path)
  and read replies with :func:`read_reply`, :func:`read_event` and :func:`classify`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from faas_llm import errors
from faas_llm.errors import ActivationStatus, FaasLLMError
from faas_llm.genparams import GenerationState
from faas_llm.types import LoadTier, ModelName

INIT_PATH, RUN_PATH, KNATIVE_PATH = "/init", "/run", "/"
READY_PATH, HEALTH_PATH, EXPORT_PATH, PREFILL_PATH = "/ready", "/health", "/export", "/prefill"
JSON_TYPE, NDJSON_TYPE = "application/json", "application/x-ndjson"
#: the ``finish_reason`` of a run stopped for a hand-off (its result carries the ``state``)
FINISH_MIGRATED = "migrated"

M = TypeVar("M", bound=BaseModel)


class _Envelope(BaseModel):
    """A request platforms may extend (OpenWhisk adds fields such as ``api_key``): unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class _Control(BaseModel):
    """A request of our own routes: exactly these fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Reply(BaseModel):
    """A reply: read leniently (a newer runtime may add fields)."""

    model_config = ConfigDict(extra="ignore")


# --- /init -----------------------------------------------------------------------------------


class InitValue(_Envelope):
    """``/init``'s ``value``: OpenWhisk's fields plus the model (``model`` and/or ``checkpoint``).

    ``model`` is a registry name; ``checkpoint`` a local directory (a faas-llm checkpoint or a
    Hugging Face model directory). ``code`` is optional Python handler source defining ``main``.
    """

    name: StrictStr | None = None
    main: StrictStr = Field("main", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    code: StrictStr | None = Field(None, max_length=1_048_576)
    binary: StrictBool = False
    env: dict[str, StrictStr] = Field(default_factory=dict)
    model: ModelName | None = None
    checkpoint: StrictStr | None = Field(None, min_length=1, max_length=4096)


class InitRequest(_Envelope):
    value: InitValue


class InitReply(_Reply):
    """What the model load cost: ``load_tier`` is where the weights came from."""

    ok: bool = True
    model: str
    load_tier: LoadTier
    load_s: float = Field(ge=0)
    init_s: float = Field(ge=0)
    source: str = Field(description="what read the weights: faas-llm (the loader), cache-agent, hf (a Hugging "
                                    "Face directory)")


def init_body(*, model: str | None = None, checkpoint: str | None = None, name: str | None = None,
              main: str = "main", code: str | None = None, binary: bool = False,
              env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An :class:`InitRequest` (OpenWhisk's ``{value: {name, main, code, binary, env}}`` plus the model)."""
    value: dict[str, Any] = {"name": name, "main": main, "code": code, "binary": binary, "env": dict(env or {}),
                             "model": model}
    if checkpoint is not None:
        value["checkpoint"] = checkpoint
    return {"value": value}


# --- /run ------------------------------------------------------------------------------------


class RunRequest(BaseModel):
    """``/run``: the parameters in ``value`` and the activation's identity, exported as ``__OW_*``.

    Unknown fields are ignored (platforms add their own); ``value`` is checked by the run itself
    (:class:`faas_llm.genparams.GenerationParams`, or whatever the action's code accepts)."""

    model_config = ConfigDict(extra="ignore")

    value: dict[str, Any] = Field(default_factory=dict)
    namespace: StrictStr | None = None
    action_name: StrictStr | None = None
    action_version: StrictStr | None = None
    activation_id: StrictStr | None = Field(None, min_length=1, max_length=128)
    transaction_id: StrictStr | None = None
    deadline: int | None = Field(None, ge=0, description="epoch ms (OpenWhisk sends it as a string)")
    api_key: StrictStr | None = None

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError("deadline must be epoch milliseconds")
            return int(value)
        if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
            raise ValueError("deadline must be epoch milliseconds")
        return value

    def activation_env(self) -> dict[str, str]:
        """The ``__OW_*`` variables of this activation (absent fields left out)."""
        fields = ("namespace", "action_name", "action_version", "activation_id", "transaction_id", "deadline",
                  "api_key")
        return {f"__OW_{name.upper()}": str(getattr(self, name)) for name in fields
                if getattr(self, name) is not None}


def run_body(value: dict[str, Any], *, namespace: str, action_name: str, action_version: str | None,
             activation_id: str, transaction_id: str | None, deadline_ms: int) -> dict[str, Any]:
    """A :class:`RunRequest` as OpenWhisk's invoker sends it (the deadline as a string of epoch ms).

    A plain dict, built without validation: this is the warm path, and the runtime validates."""
    return {"value": value, "namespace": namespace, "action_name": action_name, "action_version": action_version,
            "activation_id": activation_id, "transaction_id": transaction_id, "deadline": str(deadline_ms)}


def with_value(body: Mapping[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """The same activation's ``/run`` with other parameters (a resume elsewhere)."""
    return {**body, "value": value}


class Usage(_Reply):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    resumed_tokens: int = Field(0, description="tokens of the run made before a resume (migration)")


class Timings(_Reply):
    cold_start: bool
    load_tier: LoadTier
    load_s: float
    init_s: float
    prefill_s: float
    ttft_s: float | None
    total_s: float
    tokens_per_s: float
    queued_s: float = Field(0.0, description="waiting for a place in the runtime's batch")
    batch_size: float = Field(1.0, description="sequences per forward step the run took part in, on average")
    batch_size_max: int = Field(1, description="the most sequences in one of its steps")
    preemptions: int = Field(0, description="times it gave its KV blocks up and recomputed them later")


class RunResult(_Reply):
    """A generation's result (a handler's result is whatever JSON object its ``main`` returns)."""

    text: str = Field(description="the whole generation, a resumed part included")
    finish_reason: Literal["stop", "length", "migrated"]
    token_ids: list[int]
    model: str
    usage: Usage
    timings: Timings
    state: GenerationState | None = Field(None, description="only when finish_reason is migrated")


class ErrorBody(_Reply):
    """Every error reply (and a stream's error event)."""

    error: str
    type: str = Field(description="OpenAI's error type")
    http_status: int = Field(description="the status a client-facing API should answer with")
    activation_status: int = Field(ge=1, le=3, description="OpenWhisk's statusCode: 1 application, 2 developer, "
                                                            "3 internal")
    details: dict[str, Any] | None = None


def error_activation_status(exc: FaasLLMError) -> ActivationStatus:
    """A bad input is the application's error (OpenWhisk's statusCode 1), whatever the class says."""
    if isinstance(exc, errors.RequestError):
        return ActivationStatus.APPLICATION_ERROR
    return exc.activation_status


def error_body(exc: FaasLLMError) -> dict[str, Any]:
    """The :class:`ErrorBody` of ``exc``."""
    body: dict[str, Any] = {
        "error": exc.message,
        "type": exc.openai_type,
        "http_status": exc.http_status,
        "activation_status": int(error_activation_status(exc)),
    }
    if exc.details:
        body["details"] = exc.details
    return body


def classify(http_status: int, body: Any) -> tuple[ActivationStatus, Any]:
    """A ``/run`` reply as an activation's status and result, by OpenWhisk's rules: 200 + object =
    success, unless it has ``error`` (application error); any other status or a non-JSON body is a
    developer error (or what the body's ``activation_status`` says).

    An application error that the runtime marks as the client's (its body's ``http_status`` is
    4xx: a prompt longer than the model's context, bad generation parameters) keeps that status
    in the result, ``{"error", "http_status"}``, so a client-facing API can answer it as a bad
    request instead of a failed action (issue 12)."""
    if not isinstance(body, dict | list):
        return ActivationStatus.DEVELOPER_ERROR, {
            "error": "The action did not produce a valid JSON response."}
    if isinstance(body, dict) and "error" in body:
        declared = body.get("activation_status")
        if declared in (1, 2, 3):
            status = ActivationStatus(declared)
        else:
            status = ActivationStatus.APPLICATION_ERROR if http_status == 200 else ActivationStatus.DEVELOPER_ERROR
        result: dict[str, Any] = {"error": body["error"]}
        client_status = body.get("http_status")
        if (status is ActivationStatus.APPLICATION_ERROR and isinstance(client_status, int)
                and not isinstance(client_status, bool) and 400 <= client_status < 500):
            result["http_status"] = client_status
        return status, result
    if http_status != 200:
        return ActivationStatus.DEVELOPER_ERROR, {"error": "The action did not produce a valid response."}
    return ActivationStatus.SUCCESS, body


# --- a streamed run's NDJSON events ------------------------------------------------------------


class TokenEvent(_Reply):
    """A token and the text it adds (text that may still become a stop string is held back)."""

    type: Literal["token"] = "token"
    index: int
    token_id: int
    text: str


class TextEvent(_Reply):
    """Held-back text flushed at the end of the run."""

    type: Literal["text"] = "text"
    text: str


class ResultEvent(_Reply):
    type: Literal["result"] = "result"
    result: dict[str, Any]


class ErrorEvent(_Reply):
    type: Literal["error"] = "error"
    error: dict[str, Any] = Field(description="an ErrorBody")


StreamEvent = Annotated[TokenEvent | TextEvent | ResultEvent | ErrorEvent, Field(discriminator="type")]
_STREAM_EVENT: TypeAdapter[TokenEvent | TextEvent | ResultEvent | ErrorEvent] = TypeAdapter(StreamEvent)


def token_event(index: int, token_id: int, text: str) -> dict[str, Any]:
    return {"type": "token", "index": index, "token_id": token_id, "text": text}


def text_event(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def result_event(result: dict[str, Any]) -> dict[str, Any]:
    return {"type": "result", "result": result}


def error_event(exc: FaasLLMError) -> dict[str, Any]:
    return {"type": "error", "error": error_body(exc)}


def read_event(line: bytes) -> TokenEvent | TextEvent | ResultEvent | ErrorEvent:
    """One NDJSON line of a streamed run; raises :class:`ValueError` for anything else.

    (Validating the JSON straight into the event costs less than ``json.loads`` of it.)"""
    return _STREAM_EVENT.validate_json(line)


# --- migration: /export, /prefill, the hand-over ------------------------------------------------


class ExportRequest(_Control):
    """``/export``: stop a run at a token boundary and hand over its state (or, ``stop`` false,
    report its tokens so far and let it run on: one round of a migration)."""

    activation_id: StrictStr = Field(min_length=1, max_length=128)
    stop: StrictBool = True
    at_tokens: StrictInt | None = Field(None, ge=0, description="stop once this many tokens exist (not before)")
    wait_s: float = Field(30.0, gt=0, le=600)


class ExportSnapshot(_Reply):
    """``/export`` with ``stop`` false: the run's tokens so far (it runs on)."""

    activation_id: str
    prompt_ids: list[int]
    generated_ids: list[int]
    finished: bool


class ExportReply(_Reply):
    """``/export``: the run stopped; its ``/run`` ends with finish_reason ``migrated`` and this state."""

    activation_id: str
    state: GenerationState


class PrefillRequest(_Control):
    """``/prefill``: compute the KV cache of ``token_ids`` (prompt + generated so far) for a resume."""

    session: StrictStr = Field(min_length=1, max_length=128)
    token_ids: list[StrictInt] = Field(min_length=1)


class PrefillReply(_Reply):
    session: str
    cached_tokens: int = Field(description="tokens whose KV cache the session holds now")
    seconds: float


def export_body(activation_id: str, *, stop: bool = True, at_tokens: int | None = None,
                wait_s: float = 30.0) -> dict[str, Any]:
    """An :class:`ExportRequest`."""
    body: dict[str, Any] = {"activation_id": activation_id, "stop": stop}
    if stop:
        body["wait_s"] = wait_s
    if at_tokens is not None:
        body["at_tokens"] = at_tokens
    return body


def prefill_body(session: str, token_ids: list[int]) -> dict[str, Any]:
    """A :class:`PrefillRequest`."""
    return {"session": session, "token_ids": token_ids}


def migrated_state(result: Any) -> GenerationState | None:
    """The state a run handed over (its result's finish_reason is ``migrated``), else ``None``.

    Raises :class:`ValueError` when the result says migrated but its state is not a valid one."""
    if not isinstance(result, dict) or result.get("finish_reason") != FINISH_MIGRATED:
        return None
    return GenerationState.model_validate(result.get("state"))


def resume_value(state: GenerationState, session: str | None = None) -> dict[str, Any]:
    """The ``/run`` ``value`` that continues ``state`` (streamed; on a KV cache ``/prefill`` made for
    ``session`` when given)."""
    value: dict[str, Any] = {"resume": state.model_dump()}
    if session is not None:
        value["prefill_session"] = session
    value["stream"] = True
    return value


# --- health and replies -----------------------------------------------------------------------


class HealthReply(_Reply):
    """``GET /health`` (and ``/ready``'s 503 body): the process's state; the model once initialised."""

    state: Literal["prewarmed", "initializing", "ready"]
    prewarm_s: float
    in_flight: int
    model: str | None = None
    load_tier: LoadTier | None = None
    load_s: float | None = None
    init_s: float | None = None
    source: str | None = None
    init_error: str | None = Field(None, description="why the last /init failed")


_STATUS_ERRORS: dict[int, type[FaasLLMError]] = {
    400: errors.RequestError, 403: errors.ForbiddenError, 404: errors.NotFoundError, 409: errors.ConflictError,
    413: errors.PayloadTooLargeError, 503: errors.NoCapacityError,
}


def read_reply(model: type[M], path: str, status: int, body: Any) -> M:
    """A reply of ``path`` as ``model``. A non-200 reply raises the error its status stands for
    (404 :class:`~faas_llm.errors.NotFoundError`: no such run; 409 ConflictError: it ended first;
    403 ForbiddenError: initialised already; any other :class:`~faas_llm.errors.ActionError`), with
    the runtime's message; a 200 that is not a ``model`` raises InternalError."""
    if status != 200:
        message = body.get("error") if isinstance(body, dict) else None
        cls = _STATUS_ERRORS.get(status, errors.ActionError)
        raise cls(f"{path} answered {status}: {message or 'no error message'}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise errors.InternalError(f"the runtime's reply to {path} is not a {model.__name__}: "
                                   f"{exc.errors()[0]['msg'] if exc.errors() else exc}") from None
