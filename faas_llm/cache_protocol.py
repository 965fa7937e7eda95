"""The node-local contract between the cache agent and its clients.

1. Messages on the agent's unix socket: one JSON object per line, a request then its
   reply, several per connection allowed. Requests carry ``op``; every reply carries
   ``ok``; a refused request gets an :class:`ErrorReply` naming the error class of
   :mod:`faas_llm.errors`, which the client raises again.
2. The SSD tier's directory layout, which a client reads itself when the agent is down::

       <ssd>/models/<org>/<name>/<NNNNNN>/        one installed checkpoint version
       <ssd>/models/<org>/<name>/<NNNNNN>/.entry.json   written last: the entry is complete
       <ssd>/.tmp/                                 downloads in progress (removed at start)

   (a bare model name uses org ``_``, as in the registry).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from faas_llm import errors
from faas_llm.types import LoadTier, ModelName

MAX_LINE_BYTES = 16 * 1024 * 1024
ENTRY_FILE = ".entry.json"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------


class AcquireRequest(_Msg):
    op: Literal["acquire"] = "acquire"
    model: ModelName
    version: int | None = Field(None, ge=1, description="default: the registry's latest")
    pid: int = Field(default_factory=os.getpid)
    ttl_s: float | None = Field(None, gt=0, le=3600, description="lease TTL (default: the agent's)")
    early_meta: bool = Field(False, description="when the agent has to load the checkpoint, send an AcquireMeta "
                                                "line before the read, then the AcquireReply")


class ReleaseRequest(_Msg):
    op: Literal["release"] = "release"
    lease_id: str = Field(min_length=1, max_length=64)


class HeartbeatRequest(_Msg):
    op: Literal["heartbeat"] = "heartbeat"
    lease_ids: list[str] = Field(max_length=10_000)


class PrefetchRequest(_Msg):
    op: Literal["prefetch"] = "prefetch"
    model: ModelName
    version: int | None = Field(None, ge=1)
    tier: Literal["dram", "ssd"] = "dram"
    wait: bool = Field(False, description="reply when the checkpoint is in the tier (else: at once)")


class EvictRequest(_Msg):
    op: Literal["evict"] = "evict"
    model: ModelName
    version: int | None = Field(None, ge=1, description="default: every version held")
    tier: Literal["dram", "ssd"] = "dram"


class StatusRequest(_Msg):
    op: Literal["status"] = "status"


class MetricsRequest(_Msg):
    op: Literal["metrics"] = "metrics"


Request = Annotated[
    AcquireRequest | ReleaseRequest | HeartbeatRequest | PrefetchRequest | EvictRequest | StatusRequest
    | MetricsRequest,
    Field(discriminator="op"),
]
REQUEST_ADAPTER: TypeAdapter[Any] = TypeAdapter(Request)


# --- replies -----------------------------------------------------------------------------


class AcquireReply(_Msg):
    ok: Literal[True] = True
    lease_id: str
    model: str
    version: int
    tier: LoadTier = Field(description="where the checkpoint came from: dram (hit), ssd or registry")
    segment: str = Field(description="path of the DRAM pool's shared-memory segment")
    offset: int = Field(ge=0, description="where the checkpoint's region starts in the segment")
    nbytes: int = Field(ge=0, description="size of the checkpoint's region")
    index: str = Field(description="the checkpoint's index.json text")
    meta_dir: str = Field(description="directory with config.json and tokenizer files")
    ttl_s: float
    load_s: float = Field(0.0, description="seconds the agent spent making the checkpoint resident")
    page_bytes: int = Field(0, description="page size of the DRAM pool (2 MiB: the client pre-faults its mapping)")


class AcquireMeta(_Msg):
    """Sent before a load's read when the acquire asked for ``early_meta``: the config and tokenizer
    files are in ``meta_dir`` already, so the client can build the model's skeleton (and load its
    tokenizer) while the agent reads the weights. The AcquireReply follows on the same connection."""

    stage: Literal["meta"] = "meta"
    model: str
    version: int
    meta_dir: str


class OkReply(_Msg):
    ok: Literal[True] = True


class HeartbeatReply(_Msg):
    ok: Literal[True] = True
    expired: list[str] = Field(default_factory=list, description="lease ids the agent no longer knows")


class PrefetchReply(_Msg):
    ok: Literal[True] = True
    model: str
    version: int
    done: bool


class EvictReply(_Msg):
    ok: Literal[True] = True
    evicted: list[str] = Field(default_factory=list, description="keys removed from the tier")


class EntryStatus(_Msg):
    key: str
    nbytes: int
    last_used: float
    leases: int = 0
    offset: int | None = None


class StatusReply(_Msg):
    ok: Literal[True] = True
    node: str
    segment: str
    dram_capacity: int
    dram_free: int
    ssd_capacity: int
    ssd_used: int
    dram: list[EntryStatus]
    ssd: list[EntryStatus]
    leases: int
    pending: list[str]
    counters: dict[str, int] = Field(default_factory=dict, description="loads and fetches by kind")
    bandwidth: dict[str, float] = Field(default_factory=dict, description="measured bytes/s per tier")
    dram_page_bytes: int = Field(0, description="page size the DRAM pool got (4096, or 2 MiB on huge pages)")
    dram_huge_share: float = Field(0.0, description="fraction of the DRAM pool mapped with 2 MiB pages")


class MetricsReply(_Msg):
    ok: Literal[True] = True
    text: str


class ErrorReply(_Msg):
    ok: Literal[False] = False
    error: str
    kind: str = "InternalError"


def error_reply(exc: Exception) -> ErrorReply:
    if isinstance(exc, errors.FaasLLMError):
        return ErrorReply(error=exc.message, kind=type(exc).__name__)
    return ErrorReply(error=f"{type(exc).__name__}: {exc}", kind="InternalError")


def raise_error_reply(reply: ErrorReply) -> None:
    """Raise the faas-llm error an :class:`ErrorReply` names (InternalError if unknown)."""
    cls = getattr(errors, reply.kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.FaasLLMError)):
        cls = errors.InternalError
    raise cls(reply.error)


# --- SSD layout ---------------------------------------------------------------------------


def ssd_model_dir(root: Path, name: str) -> Path:
    org, _, base = name.rpartition("/")
    return root / "models" / (org or "_") / base


def ssd_entry_dir(root: Path, name: str, version: int) -> Path:
    return ssd_model_dir(root, name) / f"{version:06d}"


def local_versions(root: Path, name: str) -> list[int]:
    """Complete versions of ``name`` installed in the SSD tier at ``root``, oldest first."""
    mdir = ssd_model_dir(root, name)
    try:
        names = os.listdir(mdir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if n.isdigit() and len(n) == 6 and (mdir / n / ENTRY_FILE).is_file())
