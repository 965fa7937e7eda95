"""The request bodies of the action protocol (OpenWhisk's /init and /run) and our run-control calls.

Envelopes ignore fields they do not know (platforms add their own, e.g. ``api_key``); the
fields they know are typed strictly. A bad body raises :class:`~faas_llm.errors.RequestError`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from faas_llm.types import ModelName


class InitValue(BaseModel):
    """``/init``'s ``value``: OpenWhisk's fields plus the model (``model`` and/or ``checkpoint``).

    ``model`` is a registry name; ``checkpoint`` a local directory (a faas-llm checkpoint or a
    Hugging Face model directory). ``code`` is optional Python handler source defining ``main``.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    name: StrictStr | None = None
    main: StrictStr = Field("main", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    code: StrictStr | None = Field(None, max_length=1_048_576)
    binary: StrictBool = False
    env: dict[str, StrictStr] = Field(default_factory=dict)
    model: ModelName | None = None
    checkpoint: StrictStr | None = Field(None, min_length=1, max_length=4096)


class InitRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    value: InitValue


class RunRequest(BaseModel):
    """``/run``: the parameters in ``value`` and the activation's identity, exported as ``__OW_*``."""

    model_config = ConfigDict(extra="ignore")

    value: dict[str, Any] = Field(default_factory=dict)
    namespace: StrictStr | None = None
    action_name: StrictStr | None = None
    action_version: StrictStr | None = None
    activation_id: StrictStr | None = Field(None, min_length=1, max_length=128)
    transaction_id: StrictStr | None = None
    deadline: int | None = Field(None, ge=0, description="epoch ms (OpenWhisk sends it as a string)")
    api_key: StrictStr | None = None

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError("deadline must be epoch milliseconds")
            return int(value)
        if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
            raise ValueError("deadline must be epoch milliseconds")
        return value

    def activation_env(self) -> dict[str, str]:
        """The ``__OW_*`` variables of this activation (absent fields left out)."""
        fields = ("namespace", "action_name", "action_version", "activation_id", "transaction_id", "deadline",
                  "api_key")
        return {f"__OW_{name.upper()}": str(getattr(self, name)) for name in fields
                if getattr(self, name) is not None}


class ExportRequest(BaseModel):
    """``/export``: stop a run at a token boundary and hand over its state (or, ``stop`` false,
    report its tokens so far and let it run on: one round of a migration)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    activation_id: StrictStr = Field(min_length=1, max_length=128)
    stop: StrictBool = True
    at_tokens: StrictInt | None = Field(None, ge=0, description="stop once this many tokens exist (not before)")
    wait_s: float = Field(30.0, gt=0, le=600)


class PrefillRequest(BaseModel):
    """``/prefill``: compute the KV cache of ``token_ids`` (prompt + generated so far) for a resume."""

    model_config = ConfigDict(extra="forbid", strict=True)

    session: StrictStr = Field(min_length=1, max_length=128)
    token_ids: list[StrictInt] = Field(min_length=1)
