"""The invoker's side of the action protocol: ``POST /init`` and ``POST /run`` (JSON or NDJSON stream).

Outcomes are plain data; a runtime that cannot be reached or dies mid-run raises
:class:`RuntimeGone`, one that outlives the deadline :class:`RunTimedOut`.
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
from faas_llm.types import LoadTier
from invoker import keepalive

#: Extra seconds past the deadline before the invoker gives up on a runtime's reply.
DEADLINE_GRACE_S = 5.0
class RuntimeGone(Exception):
    """The runtime closed the connection or cannot be reached (it crashed or was killed)."""


class RunTimedOut(Exception):
    """The runtime did not answer before the activation's deadline."""


@dataclass(frozen=True)
class InitInfo:
    load_tier: LoadTier
    load_s: float
    init_s: float
    model: str | None = None


@dataclass
class RunOutcome:
    status: ActivationStatus
    result: Any
    #: seconds from the request to the first streamed token (streams only)
    first_token_s: float | None = None
    streamed_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def init(url: str, value: dict[str, Any], timeout_s: float) -> InitInfo:
    """``POST /init``; a non-200 answer raises :class:`InitError` with the runtime's message."""
    try:
        resp = requests.post(f"{url}/init", json={"value": value}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise RuntimeGone(f"/init failed: {exc}") from None
    body = _json_or_none(resp)
    if resp.status_code != 200:
        message = body.get("error") if isinstance(body, dict) else resp.text[:500]
        raise InitError(f"The action failed to initialize: {message}")
    body = body if isinstance(body, dict) else {}
    tier = body.get("load_tier")
    return InitInfo(
        load_tier=LoadTier(tier) if tier in {t.value for t in LoadTier} else LoadTier.REGISTRY,
        load_s=float(body.get("load_s") or 0.0), init_s=float(body.get("init_s") or 0.0), model=body.get("model"),
    )


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def classify(http_status: int, body: Any) -> tuple[ActivationStatus, Any]:
    """OpenWhisk's rules: 200 + object = success, unless it has ``error`` (application error);
    any other status or a non-JSON body is a developer error (or what the body's
    ``activation_status`` says).

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


TokenSink = Callable[[dict[str, Any]], None]


def run(url: str, body: dict[str, Any], deadline_ms: int, on_chunk: TokenSink | None = None) -> RunOutcome:
    """``POST /run``; NDJSON streams go chunk by chunk to ``on_chunk`` (``{"text", "token_ids"}``).

    Over this thread's keep-alive connection to the runtime (:mod:`invoker.keepalive`)."""
    timeout = max(0.5, deadline_ms / 1000 - time.time() + DEADLINE_GRACE_S)
    started = time.monotonic()
    try:
        resp = keepalive.post(url, "/run", json.dumps(body).encode(), 5.0, timeout)
    except TimeoutError:
        raise RunTimedOut() from None
    except (OSError, http.client.HTTPException) as exc:
        raise RuntimeGone(f"/run failed: {exc!r}") from None
    try:
        if (resp.getheader("Content-Type") or "").startswith("application/x-ndjson"):
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
        raise RuntimeGone(f"/run failed: {exc!r}") from None
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
        event = json.loads(line)
        kind = event.get("type")
        if kind in ("token", "text"):
            if kind == "token":
                tokens += 1
                if first is None:
                    first = time.monotonic() - started
            if on_chunk is not None:
                ids = [event["token_id"]] if event.get("token_id") is not None else []
                on_chunk({"text": event.get("text", ""), "token_ids": ids})
        elif kind == "result":
            return RunOutcome(ActivationStatus.SUCCESS, event.get("result"), first, tokens)
        elif kind == "error":
            status, result = classify(500, event.get("error"))
            return RunOutcome(status, result, first, tokens)
    raise RuntimeGone("the runtime's stream ended without a result")
