"""The OpenAI face's logic: models are actions, a completion is a blocking activation,
a stream follows the activation's token stream (no HTTP here; the route frames SSE)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from faas_llm.activations import ActivationStore
from faas_llm.auth import Identity
from faas_llm.errors import ActivationStatus, ActivationTimeoutError, FaasLLMError
from gateway import openai_mapping as oai
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.services.actions import ActionService
from gateway.services.invoke import InvokeService, failure_error, record_error, stored_record_error

StreamEvent = dict[str, Any] | FaasLLMError


@dataclass(frozen=True)
class Completed:
    activation_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Streaming:
    activation_id: str
    events: Iterator[StreamEvent]


def _params(req: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
    return oai.chat_params(req) if isinstance(req, ChatCompletionRequest) else oai.completion_params(req)


class OpenAIService:
    def __init__(self, actions: ActionService, invoker: InvokeService, activations: ActivationStore,
                 wait_cap_ms: int) -> None:
        self.actions = actions
        self.invoker = invoker
        self.activations = activations
        self.wait_cap_ms = wait_cap_ms

    def models(self, namespace: str) -> dict[str, Any]:
        actions = self.actions.list(namespace, skip=0, limit=self.actions.count(namespace))
        return {"object": "list", "data": [oai.model_object(a.name, namespace, a.updated) for a in actions]}

    def model(self, namespace: str, name: str) -> dict[str, Any]:
        action = self.actions.get(namespace, name)
        return oai.model_object(action.name, namespace, action.updated)

    def complete(self, identity: Identity, req: CompletionRequest | ChatCompletionRequest, tid: str) -> Completed:
        """Run one generation to its end; raise the activation's error if it failed."""
        params = _params(req)
        submitted = self.invoker.submit(identity, identity.namespace, req.model, params, tid)
        aid = submitted.activation_id
        # An LLM's first call may include a cold start: wait the action's timeout, at least the cap.
        wait_ms = max(submitted.action.limits.timeout, self.wait_cap_ms)
        raw = self.invoker.wait_queued_json(aid, wait_ms)
        if raw is None:
            raise ActivationTimeoutError(
                f"The activation {aid} did not finish within {wait_ms} ms; "
                f"see /api/v1/namespaces/_/activations/{aid}"
            )
        record = json.loads(raw)  # as stored: the invoker built it as an ActivationRecord
        error = stored_record_error(record)
        if error is not None:
            raise error
        gen = oai.Generation.of(record["response"].get("result"))
        created = int(record["start"]) // 1000
        if isinstance(req, ChatCompletionRequest):
            return Completed(aid, oai.chat_body(aid, req.model, created, gen))
        prompt = req.prompt_text() if req.echo else ""
        return Completed(aid, oai.completion_body(aid, req.model, created, gen, prompt))

    def stream(self, identity: Identity, req: CompletionRequest | ChatCompletionRequest, tid: str) -> Streaming:
        """Queue a streamed generation now (errors such as 404/429 raise here); events follow lazily."""
        submitted = self.invoker.submit(identity, identity.namespace, req.model, _params(req), tid, stream=True)
        wait_ms = max(submitted.action.limits.timeout, self.wait_cap_ms)
        return Streaming(submitted.activation_id, self._events(submitted.activation_id, req, wait_ms))

    def _events(
        self, aid: str, req: CompletionRequest | ChatCompletionRequest, wait_ms: int
    ) -> Iterator[StreamEvent]:
        chat = isinstance(req, ChatCompletionRequest)
        created = int(time.time())

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                return oai.chat_chunk(aid, req.model, created, delta, finish)
            return oai.completion_chunk(aid, req.model, created, text or "", finish)

        if chat:
            yield chunk(None, role=True)
        elif isinstance(req, CompletionRequest) and req.echo:
            yield chunk(req.prompt_text())
        completion_tokens = 0
        streamed = ""
        for token_chunk in self.activations.iter_tokens(aid, wait_ms / 1000):
            data = token_chunk.data
            if token_chunk.done and data.get("finish_reason") == "error":
                code = ActivationStatus.APPLICATION_ERROR if "http_status" in data else ActivationStatus.DEVELOPER_ERROR
                yield failure_error(code, data, f"The activation {aid} failed.")
                return
            if token_chunk.done:
                usage = oai.Usage.of(data)
                if not usage.completion_tokens:
                    usage = oai.Usage(usage.prompt_tokens, completion_tokens)
                last = chunk(None, oai.finish_reason(data.get("finish_reason")))
                yield last
                if req.include_usage:
                    yield oai.usage_chunk(last, usage)
                return
            text = str(data.get("text") or "")
            completion_tokens += len(data.get("token_ids") or [])
            if text:
                streamed += text
                yield chunk(text)
        # No "done" chunk: the activation ended some other way, or the wait ran out.
        record = self.activations.get(aid)
        if record is None:
            yield ActivationTimeoutError(f"The activation {aid} did not finish within {wait_ms} ms.")
            return
        error = record_error(record)
        if error is not None:
            yield error
            return
        # A success whose stream ended early (e.g. a handler that does not stream): send the rest.
        gen = oai.Generation.of(record.response.result)
        rest = gen.text[len(streamed):] if gen.text.startswith(streamed) else gen.text
        if rest:
            yield chunk(rest)
        last = chunk(None, gen.finish_reason)
        yield last
        if req.include_usage:
            yield oai.usage_chunk(last, gen.usage)
