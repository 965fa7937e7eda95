"""The invoker's side of the action protocol: ``POST /init`` and ``POST /run`` (JSON or NDJSON stream).

The bodies and replies are those of :mod:`faas_llm.runtime_protocol`. Outcomes are plain data; a
runtime that cannot be reached, dies mid-run or breaks the protocol raises :class:`RuntimeGone`,
one that outlives the deadline :class:`RunTimedOut`.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from faas_llm.errors import ActivationStatus, InitError
from faas_llm.runtime_protocol import (
    INIT_PATH,
    NDJSON_TYPE,
    RUN_PATH,
    ErrorEvent,
    InitReply,
    ResultEvent,
    TokenEvent,
    classify,
    read_event,
    read_reply,
)
from invoker import keepalive

#: Extra seconds past the deadline before the invoker gives up on a runtime's reply.
DEADLINE_GRACE_S = 5.0


class RuntimeGone(Exception):
    """The runtime closed the connection or cannot be reached (it crashed or was killed)."""


class RunTimedOut(Exception):
    """The runtime did not answer before the activation's deadline."""


@dataclass
class RunOutcome:
    status: ActivationStatus
    result: Any
    #: seconds from the request to the first streamed token (streams only)
    first_token_s: float | None = None
    streamed_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def init(url: str, body: dict[str, Any], timeout_s: float) -> InitReply:
    """``POST /init`` with ``body`` (:func:`faas_llm.runtime_protocol.init_body`); a non-200 answer
    raises :class:`InitError` with the runtime's message."""
    try:
        resp = requests.post(f"{url}{INIT_PATH}", json=body, timeout=timeout_s)
    except requests.RequestException as exc:
        raise RuntimeGone(f"{INIT_PATH} failed: {exc}") from None
    reply = _json_or_none(resp)
    if resp.status_code != 200:
        message = reply.get("error") if isinstance(reply, dict) else resp.text[:500]
        raise InitError(f"The action failed to initialize: {message}")
    return read_reply(InitReply, INIT_PATH, resp.status_code, reply)


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


TokenSink = Callable[[dict[str, Any]], None]


def run(url: str, body: dict[str, Any], deadline_ms: int, on_chunk: TokenSink | None = None) -> RunOutcome:
    """``POST /run`` with ``body`` (:func:`faas_llm.runtime_protocol.run_body`); NDJSON streams go
    chunk by chunk to ``on_chunk`` (``{"text", "token_ids"}``).

    Over this thread's keep-alive connection to the runtime (:mod:`invoker.keepalive`)."""
    timeout = max(0.5, deadline_ms / 1000 - time.time() + DEADLINE_GRACE_S)
    started = time.monotonic()
    try:
        resp = keepalive.post(url, RUN_PATH, json.dumps(body).encode(), 5.0, timeout)
    except TimeoutError:
        raise RunTimedOut() from None
    except (OSError, http.client.HTTPException) as exc:
        raise RuntimeGone(f"{RUN_PATH} failed: {exc!r}") from None
    try:
        if (resp.getheader("Content-Type") or "").startswith(NDJSON_TYPE):
            outcome = _read_stream(resp, started, on_chunk)
        else:
            content = resp.read()
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None
            status, result = classify(resp.status, parsed)
            outcome = RunOutcome(status, result)
        keepalive.finish(url, resp)
        return outcome
    except TimeoutError:
        keepalive.discard()
        raise RunTimedOut() from None
    except (OSError, http.client.HTTPException) as exc:
        keepalive.discard()
        raise RuntimeGone(f"{RUN_PATH} failed: {exc!r}") from None
    except ValueError as exc:  # a stream event that is not one: the runtime is broken
        keepalive.discard()
        raise RuntimeGone(f"{RUN_PATH}: the runtime broke the protocol: {exc}") from None
    except BaseException:
        keepalive.discard()
        raise


def _read_stream(resp: keepalive.Response, started: float, on_chunk: TokenSink | None) -> RunOutcome:
    first: float | None = None
    tokens = 0
    for raw in iter(resp.readline, b""):
        line = raw.strip()
        if not line:
            continue
        event = read_event(line)
        if isinstance(event, ResultEvent):
            return RunOutcome(ActivationStatus.SUCCESS, event.result, first, tokens)
        if isinstance(event, ErrorEvent):
            status, result = classify(500, event.error)
            return RunOutcome(status, result, first, tokens)
        if isinstance(event, TokenEvent):
            tokens += 1
            if first is None:
                first = time.monotonic() - started
            chunk = {"text": event.text, "token_ids": [event.token_id]}
        else:
            chunk = {"text": event.text, "token_ids": []}
        if on_chunk is not None:
            on_chunk(chunk)
    raise RuntimeGone("the runtime's stream ended without a result")
