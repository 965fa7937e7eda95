"""The invoker's side of a live migration: continue a run that a coordinator stopped for a hand-off.

See :mod:`faas_llm.migration` for the protocol; :func:`continue_if_migrated` is the dispatch hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from faas_llm import slot_lease
from faas_llm.errors import ActivationStatus
from faas_llm.genparams import GenerationState
from faas_llm.keys import Keys
from faas_llm.migration import ABORTED, FAILED, FELL_BACK, HANDING_OFF, RESUMED, RunningRun, register_run
from faas_llm.runtime_protocol import migrated_state, resume_value, with_value
from faas_llm.types import ActivationRecord, KeyValue, now_ms

log = logging.getLogger(__name__)


class RunOutcomeLike(Protocol):
    status: ActivationStatus
    result: Any


TokenSink = Callable[[dict[str, Any]], None]
RunFn = Callable[[str, dict[str, Any], TokenSink | None], RunOutcomeLike]


class SlotHooks(Protocol):
    """How a continued run accounts for container slots (the invoker's :class:`invoker.migration_slots.LeasedSlots`).

    ``release_source()``: the source stopped and handed over: its slot is free for new work.
    ``hold(lease_id)``: the destination's slot lease (taken by the coordinator) is now the run's; it is
    renewed while the run lasts and released when the context ends.
    ``fallback(source)``: a slot on a container of the action on the source's node (the source's own
    container if it is still there) for resuming after the destination failed; yields its URL.
    """

    def release_source(self) -> None: ...

    def hold(self, lease: slot_lease.SlotLease | None) -> AbstractContextManager[None]: ...

    def fallback(self, source: RunningRun) -> AbstractContextManager[str]: ...


class UnaccountedSlots:
    """No slot accounting (a caller without an invoker, e.g. the bench): the source's container resumes."""

    def release_source(self) -> None:
        return None

    @contextmanager
    def hold(self, lease: slot_lease.SlotLease | None) -> Iterator[None]:
        yield

    @contextmanager
    def fallback(self, source: RunningRun) -> Iterator[str]:
        yield source.url


@dataclass
class Handoff:
    """What a continued run adds to the activation record."""

    outcome: RunOutcomeLike
    nodes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def annotate(self, record: ActivationRecord) -> ActivationRecord:
        # the path the run took, in order (a fallback ends where it began: [a, b, a]); only repeats in a row
        # collapse, so nodes[-1] is always the node that finished it
        record.nodes = [n for i, n in enumerate(self.nodes) if i == 0 or n != self.nodes[i - 1]]
        record.node = self.nodes[-1]
        record.annotations.append(KeyValue(key="migration", value=self.info))
        return record


def _migrated_state(outcome: RunOutcomeLike) -> GenerationState | None:
    if outcome.status is not ActivationStatus.SUCCESS:
        return None
    try:
        return migrated_state(outcome.result)
    except ValueError as exc:  # a runtime bug: the result (the text so far) stands rather than nothing
        log.error("a run ended migrated with a state that is not one (%s); its result stands", exc)
        return None


def _last_stream_ms(r: Any, keys: Keys, activation_id: str) -> int | None:
    entries = r.xrevrange(keys.activation_tokens(activation_id), count=1)
    if not entries:
        return None
    entry_id = entries[0][0]
    return int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-", 1)[0])


class _Tracker:
    """A token sink that remembers what passed through (to resume from it) and forwards it."""

    def __init__(self, sink: TokenSink | None, on_first: Callable[[], None] | None = None) -> None:
        self.sink = sink
        self.on_first = on_first
        self.tokens: list[int] = []
        self.chars = 0
        self.first_ms: int | None = None

    def __call__(self, chunk: dict[str, Any]) -> None:
        ids = [int(t) for t in chunk.get("token_ids") or []]
        if ids and self.first_ms is None:
            self.first_ms = now_ms()
            if self.on_first is not None:
                self.on_first()
        self.tokens.extend(ids)
        self.chars += len(chunk.get("text") or "")
        if self.sink is not None:
            self.sink(chunk)


def continue_if_migrated(r: Any, keys: Keys, source: RunningRun, body: dict[str, Any], outcome: RunOutcomeLike,
                         run: RunFn, sink: TokenSink | None, slots: SlotHooks | None = None) -> Handoff | None:
    """The dispatch hook: if ``outcome`` is a hand-off a coordinator asked for, finish the run elsewhere.

    ``run(url, body, sink)`` is the invoker's ``/run`` call (streaming events to ``sink``); ``sink``
    is the activation's token stream (``None`` for a run that does not stream). ``slots``: the
    invoker's slot accounting (default: none). The source's slot is released as soon as it has
    stopped; the state (tokens so far) lives here and in ``keys.migration(id)``, so a failed
    destination resumes on a slot of the source's node. Returns ``None`` when there is nothing to
    continue (the ordinary outcome stands).
    """
    state = _migrated_state(outcome)
    if state is None:
        return None
    return _Continuation(r, keys, source, body, run, sink, slots or UnaccountedSlots()).follow(outcome, state)


class _Continuation:
    """One stopped run followed to its end: each hand-off, fallback and resume, the nodes it went through and
    the ``migration`` annotation."""

    def __init__(self, r: Any, keys: Keys, source: RunningRun, body: dict[str, Any], run: RunFn,
                 sink: TokenSink | None, slots: SlotHooks) -> None:
        self.r, self.keys, self.source, self.body = r, keys, source, body
        self.run, self.sink, self.slots = run, sink, slots
        self.aid = source.activation_id
        self.plan_key = keys.migration(self.aid)
        self.nodes = [source.node]
        self.info: dict[str, Any] = {"from": source.node, "rounds": 0}
        self.released = False

    def follow(self, outcome: RunOutcomeLike, state: GenerationState | None) -> Handoff | None:
        while state is not None:
            plan = self.r.hgetall(self.plan_key)
            if plan.get("phase") == HANDING_OFF and plan.get("dest_url"):
                outcome = self._hand_off(plan, state)
            elif plan.get("phase") in (ABORTED, FAILED) and len(self.nodes) == 1:
                # stopped by a migration that then gave up: the run goes on here (never lost)
                self.info.update(fell_back=True, reason=plan.get("reason") or plan.get("phase"), to=self.source.node)
                outcome = self._resume_on_source(state)
            else:
                # stopped with no hand-off waiting (e.g. the caller's own export_after): the outcome stands
                return Handoff(outcome, self.nodes, self.info) if len(self.nodes) > 1 else None
            state = _migrated_state(outcome)  # migrated again, from where it went on
        return Handoff(outcome, self.nodes, self.info)

    def _release_source(self) -> None:
        """The source stopped: its slot takes new work from now on (once)."""
        if not self.released:
            self.released = True
            self.slots.release_source()

    def _hand_off(self, plan: dict[str, Any], state: GenerationState) -> RunOutcomeLike:
        """Resume on the destination the plan names; if it fails, on the source's node."""
        self._release_source()
        dest = plan["destination"]
        lease = slot_lease.decode(plan.get("lease"))
        self.r.hdel(self.plan_key, "lease")  # the lease is this run's now
        stopped_ms = now_ms()
        last_ms = _last_stream_ms(self.r, self.keys, self.aid) if self.sink is not None else None
        track = _Tracker(self.sink, lambda: self.r.hset(self.plan_key, mapping={"phase": RESUMED,
                                                                                "resumed_ms": now_ms()}))
        outcome, error = self._run_on_destination(plan, state, lease, track)
        self.info.update(to=dest, rounds=int(plan.get("rounds") or 0), gap_tokens=int(plan.get("gap") or 0),
                         stopped_ms=stopped_ms)
        if track.first_ms is not None:
            self.info["pause_ms"] = track.first_ms - (last_ms if last_ms is not None else stopped_ms)
        if error is None and outcome is not None:
            self.nodes.append(dest)
            self.r.hset(self.plan_key, mapping={"phase": RESUMED, "pause_ms": self.info.get("pause_ms", "")})
            return outcome
        return self._destination_failed(dest, state, track, error)

    def _run_on_destination(self, plan: dict[str, Any], state: GenerationState, lease: slot_lease.SlotLease | None,
                            track: _Tracker) -> tuple[RunOutcomeLike | None, str | None]:
        """``/run`` on the destination's prefilled session, holding its slot lease: the outcome and the error."""
        dest, dest_url = plan["destination"], plan["dest_url"]
        value = resume_value(state, plan.get("session") or self.aid)
        register_run(self.r, self.keys, self.source.model_copy(update={"node": dest, "url": dest_url,
                                                                        "container": "migrated"}),
                     moved_from=self.source.node)
        try:
            with self.slots.hold(lease):
                outcome = self.run(dest_url, with_value(self.body, value), track)
        except Exception as exc:  # the destination died or cannot be reached
            return None, f"{type(exc).__name__}: {exc}"
        return outcome, None if outcome.status is ActivationStatus.SUCCESS else str(outcome.result)

    def _destination_failed(self, dest: str, state: GenerationState, track: _Tracker, error: str | None
                            ) -> RunOutcomeLike:
        """Resume on the source's node from every token made so far (none is made twice)."""
        log.warning("migration of %s to %s failed (%s); continuing on %s", self.aid, dest, error, self.source.node)
        resumed = state.model_copy(update={"generated_ids": state.generated_ids + track.tokens,
                                           "emitted_chars": state.emitted_chars + track.chars})
        self.r.hset(self.plan_key, mapping={"phase": FELL_BACK, "reason": error or "", "fell_back_ms": now_ms()})
        self.info.update(fell_back=True, reason=error, to=self.source.node)
        if track.tokens:
            self.nodes.append(dest)
        return self._resume_on_source(resumed, moved_from=dest)

    def _resume_on_source(self, state: GenerationState, moved_from: str | None = None) -> RunOutcomeLike:
        """Resume ``state`` on a slot of the source's node (its own container while it is there)."""
        self._release_source()
        self.nodes.append(self.source.node)
        with self.slots.fallback(self.source) as url:
            register_run(self.r, self.keys, self.source.model_copy(update={"url": url}), moved_from=moved_from)
            sink = self.sink if self.sink is not None else (lambda _c: None)
            return self.run(url, with_value(self.body, resume_value(state)), sink)
