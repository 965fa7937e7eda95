"""The generation engine: every run of the runtime decoded together, one forward step for all of them
(continuous batching, :mod:`action_runtime.batching`), each run streamed token by token as its own.

A run is validated here (:meth:`Engine.prepare`), handed to the step loop as a sequence, and read back
by the thread that serves it (:meth:`Engine.generate`): tokens to text (stop strings, held-back
characters), the export of a migration, the result. A run can stop at any token boundary and export
its state, and another instance can resume it: a resumed run recomputes ``prompt + generated`` (or
takes over a cache prepared by :meth:`Engine.prefill` in rounds while the source kept decoding) and
carries on; sampling is reproducible per step (:mod:`action_runtime.sampling`). With the paged forward
a row's result does not depend on the batch or on how a prompt was chunked, so a batched run, a
preempted and recomputed run and a migrated run all give the run alone, bit for bit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from action_runtime.batching.build import EngineConfig, build_loop
from action_runtime.batching.sequence import BatchStats, Ended, EndReason, Sequence, Token
from action_runtime.control import RunControl
from action_runtime.loading import LoadedModel
from action_runtime.sampling import new_seed
from action_runtime.textstream import visible_text
from faas_llm.errors import ActivationTimeoutError, DeveloperError, RequestError
from faas_llm.genparams import GenerationParams, GenerationState, SamplingParams


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: token ids in, sampling parameters, the seed, where a resumed run left off."""

    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int
    generated_ids: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    prefill_session: str | None = None

    @property
    def resumed(self) -> bool:
        return bool(self.generated_ids)


@dataclass(frozen=True)
class TextEvent:
    """A token and the text it adds (``token_id`` is ``None`` for the held-back text flushed at the end)."""

    text: str
    token_id: int | None = None
    index: int | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    resumed_tokens: int
    prefill_s: float
    ttft_s: float | None
    total_s: float
    decode_tokens_per_s: float
    state: GenerationState | None = None
    queued_s: float = 0.0
    batch: BatchStats = field(default_factory=BatchStats)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "token_ids": self.token_ids,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "resumed_tokens": self.resumed_tokens,
            },
            "timings": {
                "prefill_s": self.prefill_s,
                "ttft_s": self.ttft_s,
                "total_s": self.total_s,
                "tokens_per_s": self.decode_tokens_per_s,
                "queued_s": self.queued_s,
                "batch_size": round(self.batch.mean, 2),
                "batch_size_max": self.batch.most,
                "preemptions": self.batch.preemptions,
            },
        }
        if self.state is not None:
            out["state"] = self.state.model_dump()
        return out


def context_length(model: Any, tokenizer: Any) -> int:
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(tokenizer, "model_max_length", 2048))


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def direct_backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` when calling it directly is what ``tokenizer(text)``
    does (transformers' own ``TokenizersBackend`` call path, not overridden), else ``None``."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - another transformers layout: the wrapper serves
        return None
    kind = type(tokenizer)
    if (isinstance(tokenizer, TokenizersBackend) and kind.__call__ is PreTrainedTokenizerBase.__call__
            and kind._encode_plus is TokenizersBackend._encode_plus
            and not hasattr(tokenizer, "_switch_to_input_mode")):
        return getattr(tokenizer, "_tokenizer", None)
    return None


class Engine:
    """Generation on one loaded model: every run through one step loop (thread-safe)."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.context = context_length(self.model, self.tokenizer)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.device = next(self.model.parameters()).device
        self._empty_text = self._decode([])
        self._backend = direct_backend(self.tokenizer)
        self.config = config or EngineConfig()
        built = build_loop(self.model, self.context, self.config)
        self.loop = built.loop
        self.forward_kind = built.kind
        self.invariant = built.invariant
        self._ids = itertools.count(1)

    def close(self) -> None:
        """Stop the step loop (runs still in it end with an error)."""
        self.loop.close()

    # --- validation --------------------------------------------------------------------
    def _check_ids(self, ids: list[int], what: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"{what} holds token ids outside the vocabulary (0..{self.vocab_size - 1}): {bad[:5]}")

    def _check_context(self, n: int, what: str) -> None:
        if n >= self.context:
            raise RequestError(
                f"{what} has {n} tokens; the model's context is {self.context} tokens, which leaves no room to generate"
            )

    def tokenize(self, params: GenerationParams) -> list[int]:
        if isinstance(params.prompt, list):
            ids = list(params.prompt)
            self._check_ids(ids, "prompt")
        elif params.prompt is not None:
            ids = self._encode(params.prompt)
        else:
            assert params.messages is not None
            if not getattr(self.tokenizer, "chat_template", None):
                raise RequestError(f"model {self.name} has no chat template: send a prompt instead of messages")
            chat = [{"role": m.role, "content": m.text()} for m in params.messages]
            encoded = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
            ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [int(self.tokenizer.bos_token_id)]
        if not ids:
            raise RequestError("the prompt is empty")
        return [int(t) for t in ids]

    def _encode(self, text: str) -> list[int]:
        """``tokenizer(text)["input_ids"]``; for a ``tokenizers``-backed tokenizer whose backend has no
        truncation or padding set and the special-token splitting the wrapper asks for, the backend's call
        the wrapper would make (``encode_batch([text], add_special_tokens=True)``) without the wrapper's
        argument handling and ``BatchEncoding``."""
        backend, tokenizer = self._backend, self.tokenizer
        if (backend is not None and backend.truncation is None and backend.padding is None
                and backend.encode_special_tokens == tokenizer.split_special_tokens):
            ids: list[int] = backend.encode_batch([text], add_special_tokens=True, is_pretokenized=False)[0].ids
            if len(ids) <= tokenizer.model_max_length:
                return ids
            # too long: the wrapper's call, for its warning in the activation's log (the run then fails)
        return list(tokenizer(text)["input_ids"])

    def prepare(self, params: GenerationParams) -> PreparedRun:
        """Validate a run against this model; raises :class:`RequestError` for anything it cannot do."""
        state = params.resume
        if state is None:
            prompt_ids = self.tokenize(params)
            self._check_context(len(prompt_ids), "the prompt")
            sampling = params.sampling()
            seed = sampling.seed if sampling.seed is not None else new_seed()
            return PreparedRun(prompt_ids=prompt_ids, sampling=sampling, seed=seed)
        if state.model != self.name:
            raise RequestError(f"the state was exported by model {state.model!r}; this runtime serves {self.name!r}")
        self._check_ids(state.prompt_ids, "resume.prompt_ids")
        self._check_ids(state.generated_ids, "resume.generated_ids")
        self._check_context(len(state.prompt_ids) + len(state.generated_ids), "the resumed sequence")
        return PreparedRun(
            prompt_ids=list(state.prompt_ids), sampling=state.sampling, seed=state.seed,
            generated_ids=list(state.generated_ids), emitted_chars=state.emitted_chars,
            prefill_session=params.prefill_session,
        )


    # --- prefill sessions (the destination of a migration) -------------------------------
    def prefill(self, session: str, token_ids: list[int], timeout_s: float | None = None) -> int:
        """Compute (or extend) the KV cache of ``token_ids`` for a resume to come; returns the cached count.

        Called in rounds during a migration: each call sends the whole sequence so far; only the
        tokens past what the session holds are computed (in the step loop, batched with the runs).
        """
        self._check_ids(token_ids, "token_ids")
        self._check_context(len(token_ids), "the sequence")
        seq = Sequence(next(self._ids), list(token_ids), len(token_ids), 0, None)
        ended = self.loop.prefill(session, seq, timeout_s)
        if ended.reason is not EndReason.PREFILLED:
            raise DeveloperError(f"the prefill did not complete: {ended.error or ended.reason.value}")
        return len(token_ids)

    # --- generation --------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, run: PreparedRun, control: RunControl) -> Iterator[TextEvent | GenerationResult]:
        """Yield a :class:`TextEvent` per token, then one :class:`GenerationResult`.

        Raises :class:`ActivationTimeoutError` past the control's deadline (between tokens).
        """
        started = time.perf_counter()
        if control.past_deadline():
            raise ActivationTimeoutError(completion_tokens=len(run.generated_ids))
        limit = min(run.sampling.max_tokens, self.context - len(run.prompt_ids))
        seq = Sequence(next(self._ids), run.prompt_ids + run.generated_ids, len(run.prompt_ids), limit, run.sampling,
                       seed=run.seed, control=control, eos_ids=self.eos_ids)
        reader = _RunReader(self, run, control)
        self.loop.submit(seq, run.prefill_session)
        ended: Ended | None = None
        try:
            while ended is None and not reader.stopped:
                item = seq.outbox.get()
                if isinstance(item, Token):
                    yield reader.token(item)
                else:
                    ended = item
        finally:
            if ended is None:  # a stop string, or the reader went away: the sequence leaves the batch
                self.loop.cancel(seq)
        finish = "stop" if ended is None else reader.finish(ended)
        tail = reader.flush(finish)
        if tail is not None:
            yield tail
        yield reader.result(seq, finish, started)


class _RunReader:
    """One run's tokens turned into text as they arrive (on the thread serving the run)."""

    def __init__(self, engine: Engine, run: PreparedRun, control: RunControl) -> None:
        self.engine, self.run, self.control = engine, run, control
        self.stops = run.sampling.stop_strings()
        self.generated = list(run.generated_ids)
        self.emitted = run.emitted_chars
        # the text of ``generated`` (decoded again only when a token is added)
        self.decoded = engine._decode(self.generated) if self.generated else engine._empty_text
        self.visible = visible_text(self.decoded, self.stops)
        self.first_token_at: float | None = None
        self.state: GenerationState | None = None

    @property
    def stopped(self) -> bool:
        return self.visible.stopped

    def token(self, item: Token) -> TextEvent:
        self.generated.append(item.token_id)
        self.control.publish(item.token_id)
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.decoded = self.engine._decode(self.generated)
        self.visible = visible_text(self.decoded, self.stops)
        event = TextEvent(self.visible.text[self.emitted:], item.token_id, item.index)
        self.emitted = max(self.emitted, len(self.visible.text))
        return event

    def finish(self, ended: Ended) -> str:
        """The finish reason of how the sequence ended (raises for a timeout or a failure)."""
        reason = ended.reason
        if reason in (EndReason.STOP, EndReason.LENGTH):
            return reason.value
        if reason is EndReason.MIGRATED:
            run = self.run
            self.state = GenerationState(
                model=self.engine.name, prompt_ids=run.prompt_ids, generated_ids=self.generated,
                sampling=run.sampling, seed=run.seed, emitted_chars=self.emitted,
            )
            self.control.exported(self.state)
            return "migrated"
        if reason is EndReason.TIMEOUT:
            raise ActivationTimeoutError(completion_tokens=len(self.generated), text=self.visible.text)
        if ended.error is not None:
            raise ended.error
        raise DeveloperError(f"the generation ended early ({reason.value})")

    def flush(self, finish: str) -> TextEvent | None:
        """The held-back text, at the end (every token was decoded as it came)."""
        if finish == "migrated":
            return None
        self.visible = visible_text(self.decoded, self.stops, final=True)
        if len(self.visible.text) > self.emitted:
            return TextEvent(self.visible.text[self.emitted:])
        return None

    def result(self, seq: Sequence, finish: str, started: float) -> GenerationResult:
        ended = time.perf_counter()
        first = self.first_token_at
        new_tokens = len(self.generated) - len(self.run.generated_ids)
        decode_rate = (new_tokens - 1) / (ended - first) if first and new_tokens > 1 else 0.0
        computed = seq.computed_at
        return GenerationResult(
            text=self.visible.text, token_ids=self.generated, finish_reason=finish,
            prompt_tokens=len(self.run.prompt_ids), resumed_tokens=len(self.run.generated_ids),
            prefill_s=(computed - started) if computed is not None else 0.0,
            ttft_s=None if first is None else first - started, total_s=ended - started,
            decode_tokens_per_s=decode_rate, state=self.state,
            queued_s=(seq.scheduled_at - started) if seq.scheduled_at is not None else 0.0, batch=seq.stats,
        )
