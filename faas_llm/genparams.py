"""Generation requests on the wire: what a client may ask of an LLM action, and a run's exportable state.

The action runtime validates every run's ``value`` with it (:func:`parse_generation_params`) and
exports and resumes :class:`GenerationState`; the invoker passes a run's ``value`` through and, when it
migrates a run, hands the exported state on as ``{"resume": state}`` (it draws replay seeds with
:data:`SEED_BITS`). The gateway does not import this module: it validates OpenAI bodies with its own,
lenient models (``gateway/protocol.py``) and maps them to a ``value`` of this shape
(``gateway/openai_mapping.py``), which the runtime then checks here.

Parameters follow OpenAI's names and defaults (``temperature`` 1.0, ``top_p`` 1.0,
``max_tokens`` 16). ``temperature`` 0 is greedy decoding (deterministic). Sampling is
reproducible with a ``seed``: token ``i`` is drawn with a generator seeded from
``(seed, i)``, so the sampling state of a run is just its seed and how many tokens it has
made, and a run resumed elsewhere draws exactly what the original would have drawn.
Types are strict: ``"5"`` is not a number of tokens.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from faas_llm.types import parse

MAX_STOP_STRINGS = 4
MAX_TOKENS_LIMIT = 1_000_000
SEED_BITS = 63


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """One part of a message whose ``content`` is a list (text parts only)."""

    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    """One message of a run's ``messages``: strict (no unknown field, ``content`` required), unlike the
    OpenAI request the gateway accepts (``gateway.protocol.OpenAIChatMessage``), which it flattens to
    ``{"role", "content": text}``."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


StopStrings = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)]


class SamplingParams(_Strict):
    """How tokens are chosen and when generation ends (travels inside a :class:`GenerationState`)."""

    max_tokens: StrictInt = Field(16, ge=0, le=MAX_TOKENS_LIMIT, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: StrictStr | StopStrings | None = Field(None, description="Strings that end generation (not returned).")
    seed: StrictInt | None = Field(None, ge=0, lt=2**SEED_BITS, description="Seed of sampling (reproducible).")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        if isinstance(self.stop, str):
            if not self.stop:
                raise ValueError("stop must not be empty")
            return [self.stop]
        return list(self.stop)


class GenerationState(_Strict):
    """The exportable state of a generation: enough for another instance to continue it exactly.

    Only tokens travel (ServerlessLLM's token-based migration): the destination recomputes the
    KV cache from ``prompt_ids + generated_ids``.
    """

    version: Literal[1] = 1
    model: StrictStr = Field(description="The model (or checkpoint) that produced the tokens.")
    prompt_ids: list[StrictInt] = Field(min_length=1)
    generated_ids: list[StrictInt] = Field(default_factory=list)
    sampling: SamplingParams
    seed: StrictInt = Field(ge=0, lt=2**SEED_BITS, description="The effective seed (drawn when none was given).")
    emitted_chars: StrictInt = Field(0, ge=0, description="Characters of text already delivered to the client.")


class GenerationParams(SamplingParams):
    """The ``value`` of a generation run: a prompt (text or token ids) or chat ``messages``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: StrictStr | list[StrictInt] | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    stream: StrictBool = False
    resume: GenerationState | None = Field(None, description="Continue an exported generation instead.")
    prefill_session: StrictStr | None = Field(
        None, max_length=128, description="With resume: a session prefilled by /prefill whose KV cache to reuse."
    )
    export_after: StrictInt | None = Field(
        None, ge=0, le=MAX_TOKENS_LIMIT,
        description="Stop once this many tokens are generated (resumed ones count) and return the state "
        "(finish_reason 'migrated'): a planned hand-over or preemption point.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> GenerationParams:
        given = sum(x is not None for x in (self.prompt, self.messages, self.resume))
        if given != 1:
            raise ValueError("give exactly one of prompt, messages or resume")
        if self.prefill_session is not None and self.resume is None:
            raise ValueError("prefill_session needs resume")
        self.stop_strings()
        return self

    def sampling(self) -> SamplingParams:
        """The sampling part (what a :class:`GenerationState` carries)."""
        if self.resume is not None:
            return self.resume.sampling
        return SamplingParams.model_validate(self.model_dump(include=set(SamplingParams.model_fields)))


def parse_generation_params(value: Any) -> GenerationParams:
    """Validate a run's ``value`` or raise :class:`~faas_llm.errors.RequestError` naming each bad field."""
    return parse(GenerationParams, value)


def parse_generation_state(value: Any) -> GenerationState:
    return parse(GenerationState, value)
