"""The OpenAI-compatible face under ``/v1``: models (= actions), completions, chat completions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from faas_llm.errors import FaasLLMError, store_unavailable
from faas_llm.types import parse
from gateway.calls import ACTIVATION_HEADER, Call, RouteReply, json_reply
from gateway.errors import openai_error_body
from gateway.http_auth import caller
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.services.openai import StreamEvent

SSE = "text/event-stream; charset=utf-8"


def list_models(call: Call) -> RouteReply:
    return json_reply(call.gw.openai.models(caller(call).namespace))


def get_model(call: Call, name: str) -> RouteReply:
    return json_reply(call.gw.openai.model(caller(call).namespace, name))


def sse(events: Iterator[StreamEvent]) -> Iterator[bytes]:
    """Server-Sent Events: ``data: {chunk}`` per event (an error as OpenAI's error object), then ``[DONE]``.
    Redis failing mid-stream (the status is sent already) ends the stream with its error event."""
    try:
        for event in events:
            body = openai_error_body(event) if isinstance(event, FaasLLMError) else event
            yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
    except Exception as exc:
        unavailable = store_unavailable(exc)
        if unavailable is None:
            raise
        yield f"data: {json.dumps(openai_error_body(unavailable), separators=(',', ':'))}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _generate(call: Call, req: CompletionRequest | ChatCompletionRequest) -> RouteReply:
    gw = call.gw
    identity = caller(call)
    started = time.perf_counter()
    if req.stream:
        streaming = gw.openai.stream(identity, req, call.tid)
        gw.metrics.observe_invoke("openai", "stream", "accepted", time.perf_counter() - started)
        return RouteReply(200, sse(streaming.events), SSE, (
            ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"), (ACTIVATION_HEADER, streaming.activation_id)))
    try:
        done = gw.openai.complete(identity, req, call.tid)
    except FaasLLMError as exc:
        gw.metrics.observe_invoke("openai", "blocking", str(exc.http_status), time.perf_counter() - started)
        raise
    gw.metrics.observe_invoke("openai", "blocking", "200", time.perf_counter() - started)
    return json_reply(done.body, 200, done.activation_id)


def completions(call: Call) -> RouteReply:
    return _generate(call, parse(CompletionRequest, call.json_object(required=True)))


def chat_completions(call: Call) -> RouteReply:
    return _generate(call, parse(ChatCompletionRequest, call.json_object(required=True)))
