"""The OpenAI-compatible face under ``/v1``: models (= actions), completions, chat completions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, stream_with_context

from faas_llm.errors import FaasLLMError
from faas_llm.types import parse
from gateway.context import gateway
from gateway.errors import openai_error_body
from gateway.http_auth import authenticate, current_identity
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.routes.common import ACTIVATION_HEADER, json_object_body, json_response, transaction_id
from gateway.services.openai import StreamEvent

bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.before_request
def _authenticate() -> None:
    gw = gateway()
    authenticate(gw.auth, gw.credentials)


@bp.get("/models")
def list_models() -> Response:
    return json_response(gateway().openai.models(current_identity().namespace))


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    return json_response(gateway().openai.model(current_identity().namespace, name))


def sse(events: Iterator[StreamEvent]) -> Iterator[str]:
    """Server-Sent Events: ``data: {chunk}`` per event (an error as OpenAI's error object), then ``[DONE]``."""
    for event in events:
        body = openai_error_body(event) if isinstance(event, FaasLLMError) else event
        yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"


def _generate(req: CompletionRequest | ChatCompletionRequest) -> Response:
    gw = gateway()
    identity = current_identity()
    started = time.perf_counter()
    if req.stream:
        streaming = gw.openai.stream(identity, req, transaction_id())
        gw.metrics.observe_invoke("openai", "stream", "accepted", time.perf_counter() - started)
        return Response(
            stream_with_context(sse(streaming.events)), mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                     ACTIVATION_HEADER: streaming.activation_id},
        )
    try:
        done = gw.openai.complete(identity, req, transaction_id())
    except FaasLLMError as exc:
        gw.metrics.observe_invoke("openai", "blocking", str(exc.http_status), time.perf_counter() - started)
        raise
    gw.metrics.observe_invoke("openai", "blocking", "200", time.perf_counter() - started)
    return json_response(done.body, 200, done.activation_id)


@bp.post("/completions")
def completions() -> Response:
    return _generate(parse(CompletionRequest, json_object_body(required=True)))


@bp.post("/chat/completions")
def chat_completions() -> Response:
    return _generate(parse(ChatCompletionRequest, json_object_body(required=True)))
