"""Wire types: what crosses a process boundary (HTTP bodies, Redis records, queue messages).

pydantic models, validated on the way in; a bad payload raises
:class:`~faas_llm.errors.RequestError` with field-level messages (see :func:`parse`).
JSON field names follow OpenWhisk where OpenWhisk has the field (``activationId``,
``statusCode``) and snake_case for our own internal messages.
"""

from __future__ import annotations

import re
import secrets
import time
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from faas_llm.errors import ActivationStatus, RequestError

# --- names ------------------------------------------------------------------------------

# OpenWhisk entity names: word characters, then word characters, '@', '.', '-' or spaces;
# we refuse '..' and any slash so a name can never act as a path.
_ENTITY_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_@.\- ]{0,254}[A-Za-z0-9_@.\-])?$")
# Model registry names: "name" or "org/name", each part [A-Za-z0-9][A-Za-z0-9._-]*.
_MODEL_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ACTIVATION_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_entity_name(name: str) -> str:
    """Validate an OpenWhisk entity (namespace, action) name."""
    if not _ENTITY_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{name!r} is not a valid name: use letters, digits, '_', '@', '.', '-' or spaces "
            "(at most 256, starting with a letter, digit or '_', no '..' or '/')"
        )
    return name


def check_model_name(name: str) -> str:
    """Validate a registry model name: ``name`` or ``org/name``; no traversal."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or any(not _MODEL_PART_RE.fullmatch(p) or ".." in p for p in parts):
        raise ValueError(
            f"{name!r} is not a valid model name: use 'name' or 'org/name' where each part is "
            "letters, digits, '.', '_' or '-' (starting with a letter or digit, no '..')"
        )
    return name


def check_activation_id(value: str) -> str:
    if not _ACTIVATION_ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an activation id (32 lowercase hex digits)")
    return value


EntityName = Annotated[str, AfterValidator(check_entity_name)]
ModelName = Annotated[str, AfterValidator(check_model_name)]
ActivationId = Annotated[str, AfterValidator(check_activation_id)]


def new_activation_id() -> str:
    """A fresh activation id: 32 lowercase hex digits, like OpenWhisk's."""
    return secrets.token_hex(16)


def now_ms() -> int:
    return int(time.time() * 1000)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- actions ------------------------------------------------------------------------------

SUPPORTED_KINDS = ("llm",)


class KeyValue(_Wire):
    key: str = Field(min_length=1, max_length=256)
    value: Any = None


class Exec(_Wire):
    """How an action runs: an LLM from the registry, optionally with handler code."""

    kind: Literal["llm"]
    model: ModelName
    code: str | None = Field(None, max_length=1_048_576, description="Optional Python handler source.")
    main: str = Field("main", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    binary: bool = False


class Limits(_Wire):
    timeout: int = Field(60_000, ge=100, le=300_000, description="ms")
    memory: int = Field(2048, ge=128, le=1_048_576, description="MB")
    logs: int = Field(10, ge=0, le=10, description="MB")
    concurrency: int = Field(1, ge=1, le=500)


class Scaling(_Wire):
    """Our extension: autoscaling of an action (ServerlessLLM's auto_scaling_config)."""

    min_instances: int = Field(0, ge=0, le=1024)
    max_instances: int = Field(8, ge=1, le=1024)
    target_concurrency: int = Field(1, ge=1, le=500)
    keep_alive: float = Field(600.0, ge=0, le=86_400, description="seconds idle before scale-in")


class Action(_Wire):
    """An action as stored and as returned by the API."""

    namespace: EntityName
    name: EntityName
    version: str = "0.0.1"
    publish: bool = False
    exec: Exec
    limits: Limits = Field(default_factory=Limits)
    scaling: Scaling = Field(default_factory=Scaling)
    parameters: list[KeyValue] = Field(default_factory=list)
    annotations: list[KeyValue] = Field(default_factory=list)
    updated: int = Field(default_factory=now_ms)

    def default_params(self) -> dict[str, Any]:
        return {p.key: p.value for p in self.parameters}


# --- activations ------------------------------------------------------------------------


class LoadTier(str, Enum):
    """Where a cold start loaded its model from (``warm``: no load at all)."""

    WARM = "warm"
    DRAM = "dram"
    SSD = "ssd"
    REGISTRY = "registry"
    LOCAL = "local"


class ActivationResponse(_Wire):
    status: str
    statusCode: int = Field(ge=0, le=3)
    success: bool
    result: Any = None
    size: int = 0

    @classmethod
    def of(cls, status: ActivationStatus, result: Any, size: int = 0) -> ActivationResponse:
        return cls(
            status=status.label, statusCode=int(status), success=status is ActivationStatus.SUCCESS,
            result=result, size=size,
        )


class ActivationRecord(_Wire):
    """The OpenWhisk activation record plus faas-llm's load and latency fields."""

    namespace: str
    name: str
    version: str = "0.0.1"
    publish: bool = False
    subject: str
    activationId: ActivationId
    start: int
    end: int = 0
    duration: int = 0
    logs: list[str] = Field(default_factory=list)
    response: ActivationResponse
    annotations: list[KeyValue] = Field(default_factory=list)
    # faas-llm extensions
    coldStart: bool = False
    loadTier: LoadTier | None = None
    loadTime: float | None = Field(None, description="seconds")
    node: str | None = None
    nodes: list[str] = Field(default_factory=list, description="every node that ran it (migration)")
    timeToFirstToken: float | None = Field(None, description="seconds")


class Invocation(_Wire):
    """One queued invocation: what the gateway enqueues and an invoker consumes."""

    activation_id: ActivationId
    namespace: EntityName
    action: EntityName
    action_version: str = "0.0.1"
    subject: str
    params: dict[str, Any] = Field(default_factory=dict)
    transaction_id: str
    enqueued_ms: int = Field(default_factory=now_ms)
    deadline_ms: int = Field(description="epoch ms by which the run must end")
    stream: bool = False


# --- nodes ----------------------------------------------------------------------------------


class ContainerState(str, Enum):
    PREWARMED = "prewarmed"
    STARTING = "starting"
    BUSY = "busy"
    IDLE = "idle"
    REMOVING = "removing"


class TierInventory(_Wire):
    models: list[str] = Field(default_factory=list)
    capacity_bytes: int = 0
    free_bytes: int = 0
    read_bandwidth: float = Field(0.0, description="bytes/s measured")


class CacheInventory(_Wire):
    node: str
    ts: int = Field(default_factory=now_ms)
    dram: TierInventory = Field(default_factory=TierInventory)
    ssd: TierInventory = Field(default_factory=TierInventory)
    registry_bandwidth: float = 0.0
    pending_loads: list[str] = Field(default_factory=list, description="models waiting to be loaded")
    pending_bytes: int = 0


class ContainerInfo(_Wire):
    id: str
    state: ContainerState
    namespace: str | None = None
    action: str | None = None
    model: str | None = None
    memory_mb: int = 0
    active: int = 0
    concurrency: int = 1
    last_used_ms: int = 0
    url: str | None = None


class NodeReport(_Wire):
    node: str
    ts: int = Field(default_factory=now_ms)
    containers: list[ContainerInfo] = Field(default_factory=list)
    max_containers: int = 0
    memory_mb: int = 0
    free_memory_mb: int = 0
    draining: bool = False


# --- parsing ------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def format_validation_error(exc: ValidationError) -> str:
    """Field-level messages: ``limits.timeout: Input should be ...; exec.kind: ...``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` as ``model`` or raise :class:`RequestError` naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(format_validation_error(exc)) from None
