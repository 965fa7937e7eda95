"""The generation engine: our own decode loop over a KV cache, so tokens stream as they are made,
a run can stop at any token boundary and export its state, and another instance can resume it.

The loop is the one ``transformers``' greedy ``generate`` runs (prefill the prompt, then one
forward step per token on a growing cache), so greedy outputs are the same token for token.
A resumed run prefills ``prompt + generated`` (or extends a cache prepared by :meth:`Engine.prefill`
in rounds while the source kept decoding) and carries on; sampling is reproducible per step
(:mod:`action_runtime.sampling`), so a migrated run yields what an unmoved one would have.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from action_runtime.control import RunControl
from action_runtime.leanforward import LeanLlama, lean_forward_for
from action_runtime.loading import LoadedModel
from action_runtime.prefill import PrefillSessions, PrefillState
from action_runtime.sampling import choose_token, new_seed
from action_runtime.textstream import visible_text
from faas_llm.errors import ActivationTimeoutError, RequestError
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


def new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


class Engine:
    """Generation on one loaded model. Thread-safe: each run has its own cache."""

    def __init__(self, loaded: LoadedModel, prefill_capacity: int = 4, lean: bool = False) -> None:
        """``lean``: try the lean forward (:mod:`action_runtime.leanforward`) for this model; it serves
        only where it matches the model's own forward bit for bit, else the plain forward does."""
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.context = context_length(self.model, self.tokenizer)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.device = next(self.model.parameters()).device
        accepted = inspect.signature(self.model.forward).parameters
        # transformers 5 renamed past_key_values to cache; accept both generations of the API.
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self._keep_last_logits = "logits_to_keep" in accepted
        self.sessions = PrefillSessions(prefill_capacity)
        self._empty_text = self._decode([])
        self._backend = direct_backend(self.tokenizer)
        self.lean: LeanLlama | None = None
        if lean:
            self.lean = lean_forward_for(self.model, lambda: new_cache(self.model.config), self._cache_arg)

    def new_cache(self) -> Any:
        """An empty KV cache for :meth:`_forward` (the lean forward's own, or a ``DynamicCache``)."""
        return self.lean.new_cache() if self.lean is not None else new_cache(self.model.config)

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

    # --- the model ---------------------------------------------------------------------
    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        if self.lean is not None:
            with torch.inference_mode():
                return self.lean.forward(ids, cache)
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), **kwargs)
        return out.logits[0, -1]

    def _prefill(self, ids: list[int], session: str | None) -> tuple[torch.Tensor, Any]:
        """Logits after ``ids`` and the cache holding them (reusing a prefilled session when it fits)."""
        prepared = self.sessions.take(session) if session is not None else None
        if prepared is not None and prepared.ids == ids[: len(prepared.ids)]:
            rest = ids[len(prepared.ids):]
            if not rest:
                return prepared.logits, prepared.cache
            return self._forward(rest, prepared.cache), prepared.cache
        cache = self.new_cache()
        return self._forward(ids, cache), cache

    def prefill(self, session: str, token_ids: list[int]) -> int:
        """Compute (or extend) the KV cache of ``token_ids`` for a resume to come; returns the cached count.

        Called in rounds during a migration: each call sends the whole sequence so far; only the
        tokens past what the session holds are computed.
        """
        self._check_ids(token_ids, "token_ids")
        self._check_context(len(token_ids), "the sequence")
        held = self.sessions.take(session)
        if held is not None and len(held.ids) <= len(token_ids) and held.ids == token_ids[: len(held.ids)]:
            rest = token_ids[len(held.ids):]
            logits = self._forward(rest, held.cache) if rest else held.logits
            cache = held.cache
        else:
            cache = self.new_cache()
            logits = self._forward(token_ids, cache)
        self.sessions.put(session, PrefillState(list(token_ids), cache, logits))
        return len(token_ids)

    # --- generation --------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, run: PreparedRun, control: RunControl) -> Iterator[TextEvent | GenerationResult]:
        """Yield a :class:`TextEvent` per token, then one :class:`GenerationResult`.

        Raises :class:`ActivationTimeoutError` past the control's deadline (between tokens).
        """
        started = time.perf_counter()
        sampling = run.sampling
        stops = sampling.stop_strings()
        generated = list(run.generated_ids)
        limit = min(sampling.max_tokens, self.context - len(run.prompt_ids))
        emitted = run.emitted_chars
        finish: str | None = None
        state: GenerationState | None = None
        first_token_at: float | None = None

        if control.past_deadline():
            raise ActivationTimeoutError(completion_tokens=len(generated))
        logits, cache = self._prefill(run.prompt_ids + generated, run.prefill_session)
        prefill_s = time.perf_counter() - started
        # the text of ``generated`` (decoded again only when a token is added)
        decoded = self._decode(generated) if generated else self._empty_text
        visible = visible_text(decoded, stops)
        while finish is None:
            if len(generated) >= limit:
                finish = "length"
                break
            if control.should_stop(len(generated)):
                finish = "migrated"
                state = GenerationState(
                    model=self.name, prompt_ids=run.prompt_ids, generated_ids=generated, sampling=sampling,
                    seed=run.seed, emitted_chars=emitted,
                )
                control.exported(state)
                break
            if control.past_deadline():
                raise ActivationTimeoutError(completion_tokens=len(generated), text=visible.text)
            token = choose_token(logits, sampling, run.seed, len(generated))
            generated.append(token)
            control.publish(token)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            decoded = self._decode(generated)
            visible = visible_text(decoded, stops)
            yield TextEvent(visible.text[emitted:], token, len(generated) - 1)
            emitted = max(emitted, len(visible.text))
            if token in self.eos_ids or visible.stopped:
                finish = "stop"
            elif len(generated) < limit:
                logits = self._forward([token], cache)

        if finish != "migrated":
            visible = visible_text(decoded, stops, final=True)  # every token was decoded as it came
            if len(visible.text) > emitted:
                yield TextEvent(visible.text[emitted:])
        ended = time.perf_counter()
        new_tokens = len(generated) - len(run.generated_ids)
        decode_rate = (new_tokens - 1) / (ended - first_token_at) if first_token_at and new_tokens > 1 else 0.0
        yield GenerationResult(
            text=visible.text,
            token_ids=generated,
            finish_reason=finish,
            prompt_tokens=len(run.prompt_ids),
            resumed_tokens=len(run.generated_ids),
            prefill_s=prefill_s,
            ttft_s=None if first_token_at is None else first_token_at - started,
            total_s=ended - started,
            decode_tokens_per_s=decode_rate,
            state=state,
        )
