"""A typed Python client of faas-llm's gateway: the OpenWhisk REST API and streaming OpenAI completions.

Used by the ``faas-llm`` CLI and the benchmarks. Every HTTP error becomes the matching
:mod:`faas_llm.errors` class carrying the server's own message (``body.error``), with
``details`` = ``{"status": <HTTP status>, "code": <transaction id>}``; a gateway that
cannot be reached raises :class:`GatewayUnreachableError`. Nothing here reads the
environment: build a client from explicit values or from :class:`~faas_llm.settings.Settings`
with :meth:`Client.from_settings` (environment over the properties file over defaults).

    with Client.from_settings(get_settings()) as wsk:
        wsk.create_action("tiny", model="tiny-llama", limits={"timeout": 30000})
        done = wsk.invoke("tiny", {"prompt": "Hello"}, blocking=True)
        for text in wsk.stream_completion("tiny", "Hello", max_tokens=16):
            print(text, end="", flush=True)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, ValidationError

from faas_llm import __version__
from faas_llm.errors import (
    ActionError,
    AuthError,
    ConflictError,
    FaasLLMError,
    ForbiddenError,
    InternalError,
    NoCapacityError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    ThrottledError,
)
from faas_llm.properties import ClientConfig
from faas_llm.settings import Settings
from faas_llm.types import Action, ActivationRecord, format_validation_error

M = TypeVar("M", bound=BaseModel)

#: HTTP status -> the error it becomes on the client side
STATUS_ERRORS: dict[int, type[FaasLLMError]] = {
    400: RequestError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: ThrottledError,
    502: ActionError,
    503: NoCapacityError,
}


class GatewayUnreachableError(FaasLLMError):
    """The gateway did not answer (down, wrong apihost, network): retry once it is up."""

    http_status = 503
    recoverable = True
    default_message = "The gateway cannot be reached."


def error_for(status: int, body: Any, fallback: str) -> FaasLLMError:
    """The faas-llm error for an HTTP error response (OpenWhisk ``{error, code}`` or OpenAI ``{error: {message}}``)."""
    message, code = fallback, None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # OpenAI shape
            message = str(err.get("message") or fallback)
        elif err:
            message = str(err)
        code = body.get("code")
    cls = STATUS_ERRORS.get(status, InternalError)
    details: dict[str, Any] = {"status": status}
    if code:
        details["code"] = code
    return cls(message, **details)


@dataclass(frozen=True)
class Invoked:
    """The answer to an invoke: always the activation id; the record or result when it finished in time."""

    activation_id: str
    record: ActivationRecord | None = None
    result: Any = None
    #: False for a non-blocking invoke and for a blocking one that outlived the wait (HTTP 202)
    done: bool = False

    @property
    def success(self) -> bool | None:
        """Whether the activation succeeded (``None`` while unknown)."""
        if self.record is not None:
            return self.record.response.success
        if self.done:
            return not (isinstance(self.result, dict) and "error" in self.result)
        return None


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of a Server-Sent Events stream, up to ``data: [DONE]``; an event with ``error`` raises."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:  # comments, event:/id: fields, or a blank line with nothing pending
            continue
        payload, data = "\n".join(data), []
        if payload == "[DONE]":
            return
        event = json.loads(payload)
        if isinstance(event, dict) and event.get("error"):
            raise error_for(int(_status_of(event["error"])), event, "the stream failed")
        yield event
    if data and data != ["[DONE]"]:
        yield json.loads("\n".join(data))


def _status_of(error: Any) -> int:
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int) and 400 <= code < 600:
            return code
    return 500


class Client:
    """The OpenWhisk REST API (``/api/v1``) and the OpenAI API (``/v1``) of one gateway, as one caller."""

    def __init__(
        self,
        apihost: str,
        auth: str,
        namespace: str = "_",
        timeout: float = 75.0,
        session: requests.Session | None = None,
    ) -> None:
        self.apihost = apihost.rstrip("/")
        self.auth = auth
        self.namespace = namespace
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"User-Agent": f"faas-llm-client/{__version__}", "Accept": "application/json"})

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 75.0) -> Client:
        config = ClientConfig.resolve(settings)
        return cls(config.apihost, config.auth, namespace=config.namespace, timeout=timeout)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- transport ------------------------------------------------------------------------
    def _basic(self) -> tuple[str, str] | None:
        if not self.auth:
            return None
        user, _, key = self.auth.partition(":")
        return user, key

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (200,),
        bearer: bool = False,
        stream: bool = False,
        timeout: float | None = None,
    ) -> requests.Response:
        """One HTTP call; a status outside ``ok`` raises the matching faas-llm error."""
        url = self.apihost + path
        headers = {}
        auth = None
        if bearer:
            if self.auth:
                headers["Authorization"] = f"Bearer {self.auth}"
        else:
            auth = self._basic()
        try:
            resp = self.session.request(
                method, url, params=_query(params), json=body, auth=auth, headers=headers,
                timeout=timeout or self.timeout, stream=stream,
            )
        except requests.ConnectionError as exc:
            raise GatewayUnreachableError(
                f"cannot reach the gateway at {self.apihost} ({_reason(exc)}); is `faas-llm up` running, "
                "and is the API host right (`faas-llm property get`)?"
            ) from None
        except requests.Timeout:
            raise GatewayUnreachableError(
                f"the gateway at {self.apihost} did not answer {method} {path} in time"
            ) from None
        if resp.status_code not in ok:
            body_json = _json_or_none(resp)
            fallback = f"{resp.status_code} {resp.reason}: {resp.text[:200]}".strip() if body_json is None else (
                f"{resp.status_code} {resp.reason}"
            )
            raise error_for(resp.status_code, body_json, fallback)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.request(method, path, **kw)
        data = _json_or_none(resp)
        if data is None and resp.content.strip() not in (b"", b"null"):
            raise InternalError(f"the gateway answered {method} {path} with non-JSON: {resp.text[:200]!r}")
        return data

    def _ns(self, *parts: str) -> str:
        return "/api/v1/namespaces/" + "/".join(quote(p, safe="") for p in (self.namespace, *parts))

    # --- namespaces ---------------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        data = self._json("GET", "/api/v1/namespaces")
        return [str(n) for n in data]

    # --- actions ------------------------------------------------------------------------------
    def put_action(self, name: str, body: Mapping[str, Any], overwrite: bool = False) -> Action:
        """PUT an OpenWhisk action body as it is (``overwrite`` = update)."""
        params = {"overwrite": "true"} if overwrite else None
        return _typed(Action, self._json("PUT", self._ns("actions", name), params=params, body=dict(body)), "action")

    def create_action(
        self,
        name: str,
        model: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        limits: Mapping[str, int] | None = None,
        scaling: Mapping[str, Any] | None = None,
        annotations: Mapping[str, Any] | None = None,
        code: str | None = None,
        overwrite: bool = False,
    ) -> Action:
        """Create (``overwrite``: create or replace) an LLM action serving registry model ``model``."""
        return self.put_action(
            name, action_body(model, parameters, limits, scaling, annotations, code), overwrite=overwrite
        )

    def update_action(
        self,
        name: str,
        *,
        model: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        limits: Mapping[str, int] | None = None,
        scaling: Mapping[str, Any] | None = None,
    ) -> Action:
        """Change some fields of an existing action, keeping the rest, like ``wsk action update``
        (given parameters replace the old ones; given scaling fields are merged into the old scaling)."""
        current = self.get_action(name)
        return self.create_action(
            name,
            model or current.exec.model,
            parameters=parameters if parameters else current.default_params(),
            limits={**current.limits.model_dump(), **(limits or {})},
            scaling={**current.scaling.model_dump(), **(scaling or {})},
            annotations={a.key: a.value for a in current.annotations if a.key != "exec"},
            code=current.exec.code,
            overwrite=True,
        )

    def get_action(self, name: str) -> Action:
        return _typed(Action, self._json("GET", self._ns("actions", name)), "action")

    def list_actions(self, limit: int = 30, skip: int = 0) -> list[Action]:
        data = self._json("GET", self._ns("actions"), params={"limit": limit, "skip": skip})
        return [_typed(Action, a, "action") for a in _list(data, "actions")]

    def count_actions(self) -> int:
        data = self._json("GET", self._ns("actions"), params={"count": "true"})
        return int(data["actions"])

    def delete_action(self, name: str) -> Action:
        return _typed(Action, self._json("DELETE", self._ns("actions", name)), "action")

    def invoke(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        blocking: bool = False,
        result: bool = False,
        timeout_ms: int | None = None,
    ) -> Invoked:
        """Invoke an action. A failed activation is not an exception here: see :attr:`Invoked.success`."""
        query: dict[str, Any] = {"blocking": "true" if blocking or result else "false"}
        if result:
            query["result"] = "true"
        if timeout_ms is not None:
            query["timeout"] = timeout_ms
        wait_s = (timeout_ms or 60_000) / 1000 + 15
        resp = self.request(
            "POST", self._ns("actions", name), params=query, body=dict(params or {}), ok=(200, 202, 502),
            timeout=max(self.timeout, wait_s),
        )
        data = _json_or_none(resp)
        header_id = resp.headers.get("x-openwhisk-activation-id", "")
        if resp.status_code == 202:
            return Invoked(activation_id=str((data or {}).get("activationId") or header_id))
        if resp.status_code == 502 and not (isinstance(data, dict) and ("response" in data or result)):
            raise error_for(502, data, "the action failed")
        if result:
            return Invoked(activation_id=header_id, result=data, done=True)
        record = _typed(ActivationRecord, data, "activation")
        return Invoked(activation_id=record.activationId, record=record, result=record.response.result, done=True)

    # --- activations -------------------------------------------------------------------------
    def list_activations(
        self,
        name: str | None = None,
        limit: int = 30,
        skip: int = 0,
        since: int | None = None,
        upto: int | None = None,
    ) -> list[ActivationRecord]:
        """Most recent first, full records (``docs=true``)."""
        query: dict[str, Any] = {"limit": limit, "skip": skip, "docs": "true", "name": name, "since": since,
                                 "upto": upto}
        data = self._json("GET", self._ns("activations"), params=query)
        return [_typed(ActivationRecord, a, "activation") for a in _list(data, "activations")]

    def get_activation(self, activation_id: str) -> ActivationRecord:
        return _typed(ActivationRecord, self._json("GET", self._ns("activations", activation_id)), "activation")

    def activation_result(self, activation_id: str) -> dict[str, Any]:
        """The activation's ``response`` object (status, success, result)."""
        data = self._json("GET", self._ns("activations", activation_id, "result"))
        return dict(data) if isinstance(data, dict) else {"result": data}

    def activation_logs(self, activation_id: str) -> list[str]:
        data = self._json("GET", self._ns("activations", activation_id, "logs"))
        return [str(line) for line in (data or {}).get("logs", [])]

    def last_activation_id(self, name: str | None = None) -> str:
        records = self.list_activations(name=name, limit=1)
        if not records:
            raise NotFoundError("there are no activations yet" + (f" of {name!r}" if name else ""))
        return records[0].activationId

    def wait_activation(self, activation_id: str, timeout_s: float = 60.0, interval_s: float = 0.2) -> ActivationRecord:
        """Poll until the record is stored (404 until then), as ``wsk activation get`` after a 202."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.get_activation(activation_id)
            except NotFoundError:
                if time.monotonic() >= deadline:
                    raise NotFoundError(f"activation {activation_id} did not finish within {timeout_s:g} s") from None
                time.sleep(interval_s)

    # --- OpenAI-compatible API ---------------------------------------------------------------
    def models(self) -> list[str]:
        data = self._json("GET", "/v1/models", bearer=True)
        return [str(m["id"]) for m in data.get("data", [])]

    def completion(self, model: str, prompt: str, **options: Any) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, **options, "stream": False}
        data = self._json("POST", "/v1/completions", body=body, bearer=True, timeout=max(self.timeout, 300.0))
        return dict(data)

    def stream_completion(self, model: str, prompt: str, **options: Any) -> Iterator[str]:
        """Text pieces of ``/v1/completions`` with ``stream: true``, yielded as they arrive."""
        body = {"model": model, "prompt": prompt, **options, "stream": True}
        for event in self._stream("/v1/completions", body):
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    yield str(choice["text"])

    def stream_chat(self, model: str, messages: list[dict[str, str]], **options: Any) -> Iterator[str]:
        """Content pieces of ``/v1/chat/completions`` with ``stream: true``."""
        body = {"model": model, "messages": messages, **options, "stream": True}
        for event in self._stream("/v1/chat/completions", body):
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield str(content)

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        resp = self.request("POST", path, body=body, bearer=True, stream=True, timeout=max(self.timeout, 300.0))
        try:
            yield from parse_sse(_lines(resp))
        finally:
            resp.close()


# --- helpers ------------------------------------------------------------------------------------


def action_body(
    model: str,
    parameters: Mapping[str, Any] | None = None,
    limits: Mapping[str, int] | None = None,
    scaling: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The OpenWhisk PUT body of an LLM action (our ``exec.kind`` is ``llm``; ``scaling`` is our extension)."""
    exec_: dict[str, Any] = {"kind": "llm", "model": model}
    if code is not None:
        exec_["code"] = code
    body: dict[str, Any] = {"exec": exec_}
    if parameters:
        body["parameters"] = [{"key": k, "value": v} for k, v in parameters.items()]
    if limits:
        body["limits"] = dict(limits)
    if scaling:
        body["scaling"] = dict(scaling)
    if annotations:
        body["annotations"] = [{"key": k, "value": v} for k, v in annotations.items()]
    return body


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in params.items() if v is not None}


def _json_or_none(resp: requests.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise InternalError(f"the gateway answered a list of {what} with {type(data).__name__}")
    return data


def _typed(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InternalError(f"the gateway sent an unexpected {what}: {format_validation_error(exc)}") from None


def _reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:160]


def _lines(resp: requests.Response) -> Iterator[str]:
    """Lines of a streamed body as soon as each arrives (``read1``: no waiting for a full buffer)."""
    pending = b""
    raw = resp.raw
    while True:
        chunk = raw.read1(65536, decode_content=True)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")
    yield ""  # end any last event
