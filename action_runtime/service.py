"""The runtime's logic, free of HTTP: initialise once, run activations, export and prefill runs.

The routes (:mod:`action_runtime.routes`) parse nothing and decide nothing; they call this service,
which validates each body with the contract's models (:mod:`faas_llm.runtime_protocol`) and returns
a :class:`Reply` (status and JSON body) or a :class:`Stream` of the contract's events.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from action_runtime.activation_env import end_activation, export_env
from action_runtime.batching.build import EngineConfig
from action_runtime.control import RunControl, RunRegistry
from action_runtime.engine import Engine, GenerationResult, PreparedRun, TextEvent
from action_runtime.handler import Handler, call_handler, compile_handler
from action_runtime.loading import LoadedModel, ModelSource, ModelSpec, load_model
from action_runtime.responses import encode_result, run_error_status
from action_runtime.threads import intra_op_threads, parameter_count
from faas_llm.errors import (
    ConflictError,
    DeveloperError,
    FaasLLMError,
    ForbiddenError,
    InitError,
    RequestError,
)
from faas_llm.gcfreeze import freeze_long_lived
from faas_llm.genparams import GenerationParams, parse_generation_params
from faas_llm.runtime_protocol import (
    ExportReply,
    ExportRequest,
    ExportSnapshot,
    HealthReply,
    InitReply,
    InitRequest,
    InitValue,
    PrefillReply,
    PrefillRequest,
    RunRequest,
    error_body,
    error_event,
    result_event,
    text_event,
    token_event,
)
from faas_llm.settings import Settings
from faas_llm.types import LoadTier, new_activation_id, parse

log = logging.getLogger(__name__)

State = Literal["prewarmed", "initializing", "ready"]
_deadline: contextvars.ContextVar[int | None] = contextvars.ContextVar("deadline", default=None)


@dataclass
class Reply:
    status: int
    body: Any
    #: ``body``'s JSON when already encoded (compact, ASCII: the bytes ``json.dumps`` gives), else ``None``
    encoded: bytes | None = None


def _ascii_or_none(data: bytes) -> bytes | None:
    """``encode_result``'s bytes (``ensure_ascii=False``) when they are also the reply's (all ASCII)."""
    return data if data.isascii() else None


@dataclass
class Stream:
    events: Iterator[dict[str, Any]]


def model_spec(value: InitValue) -> ModelSpec:
    try:
        return ModelSpec(model=value.model, checkpoint=value.checkpoint)
    except ValueError as exc:
        raise RequestError(str(exc).split("\n", 1)[-1].strip()) from None


def spec_from_setting(reference: str) -> InitValue:
    """``runtime_model`` as an init value: a path (``/``, ``.`` or ``~`` first) or a registry name."""
    if reference.startswith(("/", ".", "~")):
        return InitValue(checkpoint=str(Path(reference).expanduser()))
    return InitValue(model=reference)


class RuntimeService:
    def __init__(self, settings: Settings, sources: list[ModelSource] | None = None, prewarm_s: float = 0.0) -> None:
        self.settings = settings
        self.sources = sources
        self.prewarm_s = prewarm_s
        self.runs = RunRegistry()
        self._lock = threading.Lock()
        self._state: State = "prewarmed"
        self._engine: Engine | None = None
        self._handler: Handler | None = None
        self._info: InitReply | None = None
        self._cold = True
        self._init_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def health(self) -> dict[str, Any]:
        """A :class:`HealthReply`."""
        info = self._info.model_dump(exclude={"ok"}) if self._info is not None else {}
        reply = HealthReply(state=self._state, prewarm_s=self.prewarm_s, in_flight=len(self.runs),
                            init_error=self._init_error, **info)
        return reply.model_dump(mode="json", exclude_none=True)

    def init(self, body: Any) -> dict[str, Any]:
        value = parse(InitRequest, body).value
        with self._lock:
            if self._state != "prewarmed":
                raise ForbiddenError("Cannot initialize the action more than once.")
            self._state = "initializing"
        try:
            info = self._initialise(value)
        except FaasLLMError as exc:
            self._init_error = exc.message
            self._state = "prewarmed"
            raise
        except Exception as exc:
            log.exception("init failed")
            self._init_error = f"{type(exc).__name__}: {exc}"
            self._state = "prewarmed"
            raise InitError(f"the action failed to initialize: {type(exc).__name__}: {exc}") from None
        self._init_error = None
        self._state = "ready"
        freeze_long_lived("the runtime's model")  # the model, tokenizer and engine live as long as the process
        return info.model_dump(mode="json")

    def close(self) -> None:
        """Give back the model's cache-agent lease, if any (the runtime is going away; no run after this)."""
        if self._engine is not None:
            self._engine.close()  # no step may run on the weights once their lease is given back
            self._engine.loaded.close()

    def init_from_settings(self) -> None:
        """Knative: initialise from ``settings.runtime_model`` at start, with no ``/init`` call."""
        try:
            self.init({"value": spec_from_setting(self.settings.runtime_model).model_dump(exclude_none=True)})
        except FaasLLMError as exc:
            log.error("initialising from runtime_model=%r failed: %s", self.settings.runtime_model, exc.message)

    def _initialise(self, value: InitValue) -> InitReply:
        started = time.perf_counter()
        if value.binary:
            raise InitError("binary (zip) actions are not supported: send the handler as source code")
        spec = model_spec(value)
        if value.env:
            export_env(value.env)
        loaded: LoadedModel = load_model(spec, self.settings, self.sources)
        engine: Engine | None = None
        try:
            self._set_torch_threads(loaded.model)
            engine = Engine(loaded, EngineConfig.from_settings(self.settings))
            handler = None
            if value.code and value.code.strip():
                handler = compile_handler(value.code, value.main, _LLMFacade(self), value.name or "action")
        except BaseException:
            if engine is not None:
                engine.close()
            loaded.close()  # a failed init gives its lease back at once
            raise
        self._engine, self._handler = engine, handler
        self._info = InitReply(model=loaded.name, load_tier=loaded.tier, load_s=loaded.load_s,
                               init_s=time.perf_counter() - started, source=loaded.source)
        log.info("initialised %s from %s (%s) in %.2f s", loaded.name, loaded.tier.value, loaded.source,
                 self._info.init_s)
        return self._info

    def _set_torch_threads(self, model: Any) -> None:
        """Set torch's intra-op threads for this model (the runtime serves only it); see
        :mod:`action_runtime.threads`."""
        threads = intra_op_threads(self.settings.runtime_torch_threads, parameter_count(model),
                                   self.settings.runtime_single_thread_below_params)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)

    def engine(self) -> Engine:
        if self._engine is None or not self.ready:
            raise InitError("The action has not been initialized: POST /init first.")
        return self._engine

    def _timings(self) -> dict[str, Any]:
        """The load part of a result's timings: the cold start's load for the first run, ``warm`` after."""
        info = self._info
        assert info is not None
        with self._lock:
            cold, self._cold = self._cold, False
        if cold:
            return {"cold_start": True, "load_tier": info.load_tier.value, "load_s": info.load_s,
                    "init_s": info.init_s}
        return {"cold_start": False, "load_tier": LoadTier.WARM.value, "load_s": 0.0, "init_s": 0.0}

    # --- runs ------------------------------------------------------------------------
    def run(self, body: Any) -> Reply | Stream:
        """One activation. Never raises: errors become error replies (or an error event)."""
        streaming = False
        try:
            request = parse(RunRequest, body)
            export_env(request.activation_env())
            engine = self.engine()
            if self._handler is not None:
                token = _deadline.set(request.deadline)
                try:
                    result = call_handler(self._handler, request.value)
                finally:
                    _deadline.reset(token)
                encoded = encode_result(result, self.settings.max_result_bytes)
                return Reply(200, result, _ascii_or_none(encoded))
            params = parse_generation_params(request.value)
            prepared = engine.prepare(params)
            control = RunControl(request.activation_id or new_activation_id(), request.deadline)
            control.prompt_ids = prepared.prompt_ids
            if params.export_after is not None:
                control.request_stop(params.export_after)
            if params.stream:
                stack = ExitStack()
                stack.enter_context(self.runs.track(control))
                streaming = True
                return Stream(self._stream(engine, prepared, control, stack))
            with self.runs.track(control):
                result = self._complete(engine, prepared, control)
            encoded = encode_result(result, self.settings.max_result_bytes)
            return Reply(200, result, _ascii_or_none(encoded))
        except FaasLLMError as exc:
            return Reply(run_error_status(exc), error_body(exc))
        except Exception as exc:
            log.exception("run failed")
            failure = DeveloperError(f"The action failed: {type(exc).__name__}: {exc}")
            return Reply(run_error_status(failure), error_body(failure))
        finally:
            if not streaming:
                end_activation()

    def _result(self, engine: Engine, generation: GenerationResult) -> dict[str, Any]:
        result = generation.to_dict()
        result["model"] = engine.name
        result["timings"] = {**self._timings(), **result["timings"]}
        return result

    def _complete(self, engine: Engine, prepared: PreparedRun, control: RunControl) -> dict[str, Any]:
        for item in engine.generate(prepared, control):
            if isinstance(item, GenerationResult):
                return self._result(engine, item)
        raise DeveloperError("the generation ended without a result")

    def _stream(self, engine: Engine, prepared: PreparedRun, control: RunControl,
                stack: ExitStack) -> Iterator[dict[str, Any]]:
        """Events: ``token`` per token, ``text`` for held-back text flushed at the end, then ``result``
        (or ``error``)."""
        try:
            for item in engine.generate(prepared, control):
                if isinstance(item, TextEvent):
                    if item.token_id is not None and item.index is not None:
                        yield token_event(item.index, item.token_id, item.text)
                    else:
                        yield text_event(item.text)
                else:
                    result = self._result(engine, item)
                    encode_result(result, self.settings.max_result_bytes)
                    yield result_event(result)
        except FaasLLMError as exc:
            yield error_event(exc)
        except Exception as exc:
            log.exception("streamed run failed")
            yield error_event(DeveloperError(f"The action failed: {exc}"))
        finally:
            stack.close()
            end_activation()

    def generate(self, params: GenerationParams) -> dict[str, Any]:
        """A whole generation, for action code (``llm.generate``) under the activation's deadline."""
        engine = self.engine()
        prepared = engine.prepare(params)
        control = RunControl(new_activation_id(), _deadline.get())
        with self.runs.track(control):
            return self._complete(engine, prepared, control)

    # --- migration -------------------------------------------------------------------
    def export(self, body: Any) -> dict[str, Any]:
        request = parse(ExportRequest, body)
        control = self.runs.get(request.activation_id)
        if not request.stop:
            snapshot = control.snapshot()
            return ExportSnapshot.model_construct(activation_id=request.activation_id, prompt_ids=control.prompt_ids,
                                                  generated_ids=snapshot.generated_ids,
                                                  finished=snapshot.finished).model_dump()
        control.request_stop(request.at_tokens)
        state = control.wait_exported(request.wait_s)
        if state is None:
            raise ConflictError(f"run {request.activation_id} ended before it could be exported")
        return ExportReply(activation_id=request.activation_id, state=state).model_dump()

    def prefill(self, body: Any) -> dict[str, Any]:
        request = parse(PrefillRequest, body)
        started = time.perf_counter()
        cached = self.engine().prefill(request.session, request.token_ids)
        return PrefillReply(session=request.session, cached_tokens=cached,
                            seconds=time.perf_counter() - started).model_dump()


class _LLMFacade:
    """The ``llm`` object action code sees."""

    def __init__(self, service: RuntimeService) -> None:
        self._service = service

    def generate(self, **params: Any) -> dict[str, Any]:
        params.pop("stream", None)
        return self._service.generate(parse_generation_params(params))
