"""The live-migration contract between the invoker and the migration coordinator (the worker).

The protocol (ServerlessLLM's token-based live migration), who does what:

* The invoker that runs an activation registers it (:func:`register_run`: node, container URL,
  ``keys.activation_running``; ``keys.node_running`` per node) and keeps ownership to the end:
  only it stores the record (exactly once) and acknowledges the queue entry, so a migration
  can neither lose nor duplicate an activation.
* The coordinator (:class:`worker.coordinator.Coordinator`, run by the ``faas_llm.migrate``
  Celery task) moves it:

  1. B (the destination) gets a container of the action: a warm one, else a start request to
     B's invoker, then the model is loaded there;
  2. rounds: A keeps decoding while B receives the tokens so far (``/export`` with ``stop``
     false on A, ``/prefill`` on B) and recomputes the KV cache, until the gap is at most
     ``settings.migration_gap_tokens``;
  3. the coordinator writes the hand-off (``keys.migration(id)``: destination URL, session, the
     phases below) and asks A to stop (``/export``): A's ``/run`` ends with ``finish_reason``
     ``migrated`` and the state (tokens, sampling, seed, characters already delivered).
* The invoker's dispatch hook (:func:`invoker.handoff.continue_if_migrated`) sees that outcome and
  resumes the run on B (``/run`` with ``resume`` and the prefilled session), streaming B's tokens to
  the same activation token stream. If B fails, the run resumes on A's container from the tokens
  made so far; if A finishes before it is stopped, its outcome is the ordinary one. The record lists
  both nodes (``nodes``) and a ``migration`` annotation with the pause the client saw.

This module holds what both sides read and write: the running-run registry and the phases of the
hand-off record.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from faas_llm.keys import Keys
from faas_llm.types import now_ms

#: phases of ``keys.migration(id)``
PREPARING, PREFILLING, HANDING_OFF, RESUMED, FELL_BACK, ABORTED, FAILED = (
    "preparing", "prefilling", "handing_off", "resumed", "fell_back", "aborted", "failed")
ACTIVE_PHASES = (PREPARING, PREFILLING, HANDING_OFF)
MAX_ROUNDS = 8


class RunningRun(BaseModel):
    """Where an activation runs now (``keys.activation_running``)."""

    activation_id: str
    node: str
    container: str
    url: str
    namespace: str
    action: str
    model: str
    deadline_ms: int
    #: when the run started (ms) and the most tokens it may make (0: unknown): its expected remaining time
    started_ms: int = 0
    max_tokens: int = 0


def register_run(r: Any, keys: Keys, run: RunningRun, moved_from: str | None = None, *, pipe: Any = None) -> None:
    """``pipe``: queue the writes on this (MULTI) pipeline, which the caller executes, instead."""
    ttl_ms = max(1000, run.deadline_ms - now_ms() + 60_000)
    own = pipe is None
    if own:
        pipe = r.pipeline(transaction=True)
    pipe.set(keys.activation_running(run.activation_id), run.model_dump_json(), px=ttl_ms)
    pipe.zadd(keys.node_running(run.node), {run.activation_id: run.deadline_ms})
    if moved_from is not None and moved_from != run.node:
        pipe.zrem(keys.node_running(moved_from), run.activation_id)
    if own:
        pipe.execute()


def unregister_run(r: Any, keys: Keys, activation_id: str, nodes: list[str]) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.activation_running(activation_id))
    for node in nodes:
        pipe.zrem(keys.node_running(node), activation_id)
    pipe.execute()


def running(r: Any, keys: Keys, activation_id: str) -> RunningRun | None:
    raw = r.get(keys.activation_running(activation_id))
    try:
        return RunningRun.model_validate_json(raw) if raw else None
    except ValidationError:
        return None


def running_on(r: Any, keys: Keys, node: str) -> list[str]:
    """Activations running on ``node`` now (entries past their deadline are dropped)."""
    r.zremrangebyscore(keys.node_running(node), "-inf", now_ms() - 60_000)
    return [a.decode() if isinstance(a, bytes) else a for a in r.zrange(keys.node_running(node), 0, -1)]
