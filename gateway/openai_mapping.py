"""OpenAI <-> faas-llm: the one place that knows both shapes.

In: an OpenAI request becomes the ``params`` of an invocation, in the shape of
:class:`faas_llm.genparams.GenerationParams` (``prompt`` or ``messages``, ``max_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``, ``stream``).

Out: the action runtime's result (``{"text", "finish_reason", "token_ids", "usage":
{"prompt_tokens", "completion_tokens", "total_tokens"}, "timings", "model"}``) and the
token-stream chunks (``{"text", "token_ids"}`` ... ``{"done": true, "finish_reason",
"usage"}``) become OpenAI completion / chat completion objects and stream chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest

FINISH_REASONS = {"stop": "stop", "length": "length", "eos": "stop", "max_tokens": "length",
                  "stop_string": "stop", "content_filter": "content_filter"}


def _sampling(req: SamplingRequest, max_tokens: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p, "stop": req.stop,
        "seed": req.seed, "stream": req.stream,
    }
    return {k: v for k, v in out.items() if v is not None}


def completion_params(req: CompletionRequest) -> dict[str, Any]:
    return {"prompt": req.prompt_text(), **_sampling(req, req.max_tokens)}


def chat_params(req: ChatCompletionRequest) -> dict[str, Any]:
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    return {"messages": messages, **_sampling(req, req.token_budget)}


def finish_reason(value: Any) -> str:
    return FINISH_REASONS.get(str(value), "stop") if value else "stop"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, data: Any) -> Usage:
        """From ``{"usage": {...}}``, a bare usage object, or top-level token counts."""
        if not isinstance(data, dict):
            return cls()
        nested = data.get("usage")
        usage: dict[str, Any] = nested if isinstance(nested, dict) else data
        prompt = usage.get("prompt_tokens", 0)
        completion = usage.get("completion_tokens", 0)
        if not completion and isinstance(data.get("token_ids"), list):
            completion = len(data["token_ids"])
        return cls(int(prompt or 0), int(completion or 0))

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True)
class Generation:
    """What a finished generation means to an OpenAI client."""

    text: str
    finish_reason: str
    usage: Usage

    @classmethod
    def of(cls, result: Any) -> Generation:
        if isinstance(result, str):
            return cls(result, "stop", Usage())
        if not isinstance(result, dict):
            return cls("", "stop", Usage())
        text = result.get("text", result.get("generated_text", ""))
        return cls(str(text) if text is not None else "", finish_reason(result.get("finish_reason")),
                   Usage.of(result))


def completion_id(activation_id: str) -> str:
    return f"cmpl-{activation_id}"


def chat_id(activation_id: str) -> str:
    return f"chatcmpl-{activation_id}"


def completion_body(activation_id: str, model: str, created: int, gen: Generation, prompt: str = "") -> dict[str, Any]:
    return {
        "id": completion_id(activation_id), "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": prompt + gen.text, "finish_reason": gen.finish_reason, "logprobs": None}],
        "usage": gen.usage.to_dict(),
    }


def chat_body(activation_id: str, model: str, created: int, gen: Generation) -> dict[str, Any]:
    return {
        "id": chat_id(activation_id), "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": gen.text},
            "finish_reason": gen.finish_reason, "logprobs": None,
        }],
        "usage": gen.usage.to_dict(),
    }


def completion_chunk(
    activation_id: str, model: str, created: int, text: str, finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id(activation_id), "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def chat_chunk(
    activation_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": chat_id(activation_id), "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def usage_chunk(base: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    return {**{k: base[k] for k in ("id", "object", "created", "model")}, "choices": [], "usage": usage.to_dict()}


def model_object(name: str, namespace: str, created_ms: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created_ms // 1000, "owned_by": namespace}
