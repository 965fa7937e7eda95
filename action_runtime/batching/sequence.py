"""One request's state inside the batching engine, and the events it sends to its reader.

The step loop owns a :class:`Sequence` (only it mutates one); the thread that serves the request reads
its :class:`Outbox` (tokens as they are made, then one :class:`Ended`).
"""

from __future__ import annotations

import enum
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from action_runtime.control import RunControl
from faas_llm.genparams import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # queued (new, or preempted: its cache is recomputed when it runs again)
    RUNNING = "running"  # has blocks and is in every step until it ends
    PARKED = "parked"  # a prefill session: blocks held for a resume to come, evictable
    ENDED = "ended"


class EndReason(enum.Enum):
    STOP = "stop"  # an end-of-sequence token
    LENGTH = "length"  # max_tokens or the context
    MIGRATED = "migrated"  # stopped for an export
    TIMEOUT = "timeout"  # past the run's deadline
    CANCELLED = "cancelled"  # its reader went away, or ended it (a stop string)
    PREFILLED = "prefilled"  # a prefill session's tokens are all in the cache
    FAILED = "failed"  # the step raised


@dataclass(frozen=True)
class Token:
    token_id: int
    index: int  # position among the generated tokens (resumed ones included)


@dataclass(frozen=True)
class Ended:
    reason: EndReason
    generated_ids: list[int]
    error: BaseException | None = None


Outbox = queue.SimpleQueue  # of Token | Ended


@dataclass
class BatchStats:
    """What the run shared: the number of sequences in each step it took part in."""

    steps: int = 0
    total: int = 0
    most: int = 0
    preemptions: int = 0

    def add(self, batch: int) -> None:
        self.steps += 1
        self.total += batch
        self.most = max(self.most, batch)

    @property
    def mean(self) -> float:
        return self.total / self.steps if self.steps else 0.0


@dataclass(eq=False)
class Sequence:
    """``tokens`` is the prompt plus what was generated; ``num_computed`` of them are in the KV cache.
    While it decodes, the last token is the one not yet computed (its logits give the next)."""

    seq_id: int
    tokens: list[int]
    prompt_len: int
    max_new: int
    """Most generated tokens (resumed ones included): ``max_tokens`` within the context."""
    sampling: SamplingParams | None
    """``None``: a prefill session (no token is generated)."""
    seed: int = 0
    control: RunControl | None = None
    eos_ids: frozenset[int] = frozenset()
    outbox: Outbox = field(default_factory=queue.SimpleQueue)
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    arrived: float = field(default_factory=time.perf_counter)
    scheduled_at: float | None = None
    """When it first took part in a step (``arrived`` to here: queued)."""
    computed_at: float | None = None
    """When its prompt (and resumed tokens) were in the cache and its first token drawn."""
    stats: BatchStats = field(default_factory=BatchStats)
    cache: Any = None
    """Per-sequence cache of a forward that keeps one (:mod:`.percall`); the paged forward uses ``blocks``."""

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def to_compute(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def generates(self) -> bool:
        return self.sampling is not None

    def generated_ids(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    def end(self, reason: EndReason, error: BaseException | None = None) -> None:
        self.status = Status.ENDED
        self.outbox.put(Ended(reason, self.generated_ids(), error))
