"""Live migration of a running generation (ServerlessLLM's token-based protocol).

Who does what:

* The invoker that runs an activation registers it (:func:`register_run`: node, container URL,
  ``keys.activation_running``; ``keys.node_running`` per node) and keeps ownership to the end:
  only it stores the record (exactly once) and acknowledges the queue entry, so a migration
  can neither lose nor duplicate an activation.
* The coordinator (:class:`Coordinator`, run by the ``faas_llm.migrate`` Celery task) moves it:

  1. B (the destination) gets a container of the action: a warm one, else a start request to
     B's invoker, then the model is loaded there;
  2. rounds: A keeps decoding while B receives the tokens so far (``/export`` with ``stop``
     false on A, ``/prefill`` on B) and recomputes the KV cache, until the gap is at most
     ``settings.migration_gap_tokens``;
  3. the coordinator writes the hand-off (``keys.migration(id)``: destination URL, session) and
     asks A to stop (``/export``): A's ``/run`` ends with ``finish_reason`` ``migrated`` and the
     state (tokens, sampling, seed, characters already delivered).
* The invoker's dispatch hook (:func:`continue_if_migrated`) sees that outcome and resumes the
  run on B (``/run`` with ``resume`` and the prefilled session), streaming B's tokens to the same
  activation token stream. If B fails, the run resumes on A's container from the tokens made so
  far; if A finishes before it is stopped, its outcome is the ordinary one. The record lists
  both nodes (``nodes``) and a ``migration`` annotation with the pause the client saw.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from pydantic import BaseModel, ValidationError

from faas_llm import slot_lease
from faas_llm.errors import ActivationStatus, ConflictError, NoCapacityError, NotFoundError
from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import ActivationRecord, KeyValue, NodeReport, now_ms

log = logging.getLogger(__name__)

#: phases of ``keys.migration(id)``
PREPARING, PREFILLING, HANDING_OFF, RESUMED, FELL_BACK, ABORTED, FAILED = (
    "preparing", "prefilling", "handing_off", "resumed", "fell_back", "aborted", "failed")
ACTIVE_PHASES = (PREPARING, PREFILLING, HANDING_OFF)
MAX_ROUNDS = 8
START_REQUEST_FIELD = "request"  # the invoker's start-request stream field (invoker.scheduler)


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


# --- the invoker's side ------------------------------------------------------------------------


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


class RunOutcomeLike(Protocol):
    status: ActivationStatus
    result: Any


TokenSink = Callable[[dict[str, Any]], None]
RunFn = Callable[[str, dict[str, Any], TokenSink | None], RunOutcomeLike]


class SlotHooks(Protocol):
    """How a continued run accounts for container slots (the invoker's :class:`faas_llm.migration_slots.LeasedSlots`).

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


def _migrated_state(outcome: RunOutcomeLike) -> dict[str, Any] | None:
    result = outcome.result
    if outcome.status is ActivationStatus.SUCCESS and isinstance(result, dict) \
            and result.get("finish_reason") == "migrated" and isinstance(result.get("state"), dict):
        return dict(result["state"])
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
    aid = source.activation_id
    state = _migrated_state(outcome)
    if state is None:
        return None
    slots = slots or UnaccountedSlots()
    nodes = [source.node]
    info: dict[str, Any] = {"from": source.node, "rounds": 0}
    released = False
    while state is not None:
        plan = r.hgetall(keys.migration(aid))
        if plan.get("phase") != HANDING_OFF or not plan.get("dest_url"):
            if plan.get("phase") in (ABORTED, FAILED) and state.get("generated_ids") is not None and len(nodes) == 1:
                # stopped by a migration that then gave up: the run goes on here (never lost)
                info.update(fell_back=True, reason=plan.get("reason") or plan.get("phase"), to=source.node)
                outcome = _resume_on_source(r, keys, source, body, state, run, sink, slots, nodes, released)
                released = True
                state = _migrated_state(outcome)
                continue
            # stopped with no hand-off waiting (e.g. the caller's own export_after): the outcome stands
            return Handoff(outcome, nodes, info) if len(nodes) > 1 else None
        if not released:
            slots.release_source()  # the source stopped: its slot takes new work from now on
            released = True
        dest, dest_url = plan["destination"], plan["dest_url"]
        lease = slot_lease.decode(plan.get("lease"))
        r.hdel(keys.migration(aid), "lease")  # the lease is this run's now
        stopped_ms = now_ms()
        last_ms = _last_stream_ms(r, keys, aid) if sink is not None else None
        track = _Tracker(sink, lambda: r.hset(keys.migration(aid), mapping={"phase": RESUMED, "resumed_ms": now_ms()}))
        value = {"resume": state, "prefill_session": plan.get("session") or aid, "stream": True}
        register_run(r, keys, source.model_copy(update={"node": dest, "url": dest_url, "container": "migrated"}),
                     moved_from=source.node)
        next_outcome: RunOutcomeLike | None = None
        try:
            with slots.hold(lease):
                next_outcome = run(dest_url, {**body, "value": value}, track)
            error = None if next_outcome.status is ActivationStatus.SUCCESS else str(next_outcome.result)
        except Exception as exc:  # the destination died or cannot be reached
            error = f"{type(exc).__name__}: {exc}"
        info.update(to=dest, rounds=int(plan.get("rounds") or 0), gap_tokens=int(plan.get("gap") or 0),
                    stopped_ms=stopped_ms)
        if track.first_ms is not None:
            info["pause_ms"] = track.first_ms - (last_ms if last_ms is not None else stopped_ms)
        if error is None and next_outcome is not None:
            nodes.append(dest)
            r.hset(keys.migration(aid), mapping={"phase": RESUMED, "pause_ms": info.get("pause_ms", "")})
            outcome = next_outcome
            state = _migrated_state(outcome)  # migrated again, from B onwards
            continue
        # B failed: resume on the source's node from every token made so far (none is made twice)
        log.warning("migration of %s to %s failed (%s); continuing on %s", aid, dest, error, source.node)
        resumed = {**state, "generated_ids": list(state.get("generated_ids") or []) + track.tokens,
                   "emitted_chars": int(state.get("emitted_chars") or 0) + track.chars}
        r.hset(keys.migration(aid), mapping={"phase": FELL_BACK, "reason": error or "", "fell_back_ms": now_ms()})
        info.update(fell_back=True, reason=error, to=source.node)
        if track.tokens:
            nodes.append(dest)
        outcome = _resume_on_source(r, keys, source, body, resumed, run, sink, slots, nodes, True, moved_from=dest)
        state = _migrated_state(outcome)
    return Handoff(outcome, nodes, info)


def _resume_on_source(r: Any, keys: Keys, source: RunningRun, body: dict[str, Any], state: dict[str, Any], run: RunFn,
                      sink: TokenSink | None, slots: SlotHooks, nodes: list[str], released: bool,
                      moved_from: str | None = None) -> RunOutcomeLike:
    """Resume ``state`` on a slot of the source's node (its own container while it is there)."""
    if not released:
        slots.release_source()
    nodes.append(source.node)
    with slots.fallback(source) as url:
        register_run(r, keys, source.model_copy(update={"url": url}), moved_from=moved_from)
        value = {"resume": state, "stream": True}
        return run(url, {**body, "value": value}, sink if sink is not None else (lambda _c: None))


# --- the coordinator -----------------------------------------------------------------------------


@dataclass
class MigrationOutcome:
    activation_id: str
    phase: str
    source: str | None = None
    destination: str | None = None
    rounds: int = 0
    gap: int | None = None
    reason: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Coordinator:
    """Moves a running activation to another node (steps 1-3 above); idempotent per activation."""

    def __init__(self, settings: Settings, r: Any, keys: Keys, http: requests.Session | None = None) -> None:
        self.settings, self.r, self.keys = settings, r, keys
        self.http = http or requests.Session()

    # --- HTTP to runtimes ------------------------------------------------------------------
    def _post(self, url: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        resp = self.http.post(f"{url}{path}", json=body, timeout=timeout_s)
        data = resp.json() if resp.content else {}
        if resp.status_code == 404:
            raise NotFoundError(str(data.get("error")))
        if resp.status_code == 409:
            raise ConflictError(str(data.get("error")))
        if resp.status_code != 200:
            raise NoCapacityError(f"{path} on {url} answered {resp.status_code}: {data.get('error')}")
        return dict(data)

    # --- destination ------------------------------------------------------------------------
    def reports(self) -> list[NodeReport]:
        names = sorted(set(self.r.zrange(self.keys.nodes_index(), 0, -1)))
        raws = self.r.mget([self.keys.node(n) for n in names]) if names else []
        return [NodeReport.model_validate_json(raw) for raw in raws if raw]

    def choose_destination(self, run: RunningRun) -> str:
        """The live, non-draining node other than the source with a warm container of the action,
        else the most free slots (then node id)."""
        best: tuple[int, int, str] | None = None
        for rep in self.reports():
            if rep.node == run.node or rep.draining:
                continue
            warm = any(c.namespace == run.namespace and c.action == run.action and c.url for c in rep.containers)
            free = rep.max_containers - len(rep.containers)
            if not warm and free <= 0:
                continue
            key = (0 if warm else 1, -free, rep.node)
            best = key if best is None or key < best else best
        if best is None:
            raise NoCapacityError(f"no other node can take activation {run.activation_id} now")
        return best[2]

    def _warm_url(self, node: str, run: RunningRun) -> str | None:
        raw = self.r.get(self.keys.node(node))
        if not raw:
            return None
        rep = NodeReport.model_validate_json(raw)
        for c in sorted(rep.containers, key=lambda c: c.active):
            if c.namespace == run.namespace and c.action == run.action and c.url \
                    and c.state.value in ("idle", "busy"):
                return c.url
        return None

    def ensure_container(self, node: str, run: RunningRun, timeout_s: float) -> str:
        """A ready container of the action on ``node`` (asking its invoker to start one if needed)."""
        url = self._warm_url(node, run)
        if url is not None:
            return url
        request_id = secrets.token_hex(8)
        payload = json.dumps({"id": request_id, "namespace": run.namespace, "action": run.action})
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.keys.action_starts(run.namespace, run.action), {request_id: now_ms() + int(timeout_s * 1000)})
        pipe.xadd(self.keys.node_starts(node), {START_REQUEST_FIELD: payload}, maxlen=1000, approximate=True)
        pipe.execute()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            url = self._warm_url(node, run)
            if url is not None:
                return url
            if self.r.get(self.keys.activation(run.activation_id)):
                raise ConflictError("the activation finished while the destination was starting")
            time.sleep(0.1)
        raise NoCapacityError(f"node {node} did not start a container of {run.namespace}/{run.action} in time")

    # --- the protocol -------------------------------------------------------------------------
    def _set(self, aid: str, **fields: Any) -> None:
        self.r.hset(self.keys.migration(aid), mapping={k: "" if v is None else v for k, v in fields.items()})
        self.r.expire(self.keys.migration(aid), 86400)

    def migrate(self, activation_id: str, destination: str | None = None, *, gap_tokens: int | None = None,
                stop_at: int | None = None, wait_s: float = 60.0) -> MigrationOutcome:
        """Move the activation; ``stop_at``: hand over once the source has made this many tokens (not
        before; a planned point), else as soon as the destination has caught up."""
        started = time.monotonic()
        aid = activation_id
        gap_limit = self.settings.migration_gap_tokens if gap_tokens is None else gap_tokens
        current = self.r.hgetall(self.keys.migration(aid))
        if current.get("phase") in ACTIVE_PHASES and now_ms() - int(current.get("started_ms") or 0) < 600_000:
            return MigrationOutcome(aid, current["phase"], current.get("source"), current.get("destination"),
                                    reason="a migration of this activation is already in progress")
        run = running(self.r, self.keys, aid)
        if run is None or self.r.get(self.keys.activation(aid)):
            return MigrationOutcome(aid, ABORTED, reason="the activation is not running")
        out = MigrationOutcome(aid, PREPARING, run.node)
        try:
            dest = destination or self.choose_destination(run)
            if dest == run.node:
                raise ConflictError(f"activation {aid} already runs on {dest}")
            out.destination = dest
            self._set(aid, phase=PREPARING, source=run.node, destination=dest, started_ms=now_ms(), dest_url=None,
                      session=aid, rounds=0, gap=None, reason=None, lease=None)
            dest_url = self.ensure_container(dest, run, self.settings.runtime_start_timeout_s)
            self._set(aid, phase=PREFILLING)
            out.rounds, out.gap = self._rounds(run, dest_url, aid, gap_limit)
            # the resume will hold one of the destination container's slots: take it before A stops
            lease = slot_lease.request_slot(self.r, self.keys, dest, dest_url, ttl_ms=slot_lease.lease_ttl_ms(
                self.settings), wait_s=min(60.0, max(1.0, (run.deadline_ms - now_ms()) / 1000)))
            self._set(aid, phase=HANDING_OFF, dest_url=dest_url, rounds=out.rounds, gap=out.gap,
                      lease=slot_lease.encode(lease))
            export: dict[str, Any] = {"activation_id": aid, "stop": True, "wait_s": 30.0}
            if stop_at is not None:
                export["at_tokens"] = stop_at
            self._post(run.url, "/export", export, 40.0)
        except (ConflictError, NotFoundError) as exc:
            out.phase, out.reason = ABORTED, f"the source finished first ({exc.message})"
        except NoCapacityError as exc:
            out.phase, out.reason = FAILED, exc.message
        except (requests.RequestException, ValueError) as exc:
            out.phase, out.reason = FAILED, f"{type(exc).__name__}: {exc}"
        if out.phase in (ABORTED, FAILED):
            self._set(aid, phase=out.phase, reason=out.reason)
            slot_lease.release(self.r, self.keys, slot_lease.decode(self.r.hget(self.keys.migration(aid), "lease")))
            self.r.hdel(self.keys.migration(aid), "lease")
            log.info("migration of %s %s: %s", aid, out.phase, out.reason)
        else:
            out.phase = self._await_handoff(aid, wait_s)
        out.seconds = time.monotonic() - started
        self._set(aid, seconds=round(out.seconds, 4))
        return out

    def _rounds(self, run: RunningRun, dest_url: str, aid: str, gap_limit: int) -> tuple[int, int]:
        """Prefill B with the tokens so far until it is within ``gap_limit`` tokens of A."""
        prefilled = -1
        rounds = 0
        gap = 0
        while rounds < MAX_ROUNDS:
            snap = self._snapshot(run, aid)
            if snap.get("finished"):
                raise ConflictError("the run finished")
            generated = list(snap["generated_ids"])
            gap = len(generated) - prefilled
            if prefilled >= 0 and gap <= gap_limit:
                break
            self._post(dest_url, "/prefill", {"session": aid, "token_ids": list(snap["prompt_ids"]) + generated}, 120.0)
            prefilled = len(generated)
            rounds += 1
            self._set(aid, rounds=rounds, prefilled=prefilled)
        return rounds, max(0, gap)

    def _snapshot(self, run: RunningRun, aid: str, settle_s: float = 5.0) -> dict[str, Any]:
        """The source's tokens so far (the run is registered just before its ``/run`` arrives: retry a
        moment on 404 while no record exists)."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                return self._post(run.url, "/export", {"activation_id": aid, "stop": False}, 30.0)
            except NotFoundError:
                if time.monotonic() > deadline or self.r.get(self.keys.activation(aid)):
                    raise
                time.sleep(0.01)

    def _await_handoff(self, aid: str, wait_s: float) -> str:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            phase = self.r.hget(self.keys.migration(aid), "phase")
            if phase in (RESUMED, FELL_BACK) or self.r.get(self.keys.activation(aid)):
                return str(self.r.hget(self.keys.migration(aid), "phase"))
            time.sleep(0.02)
        return str(self.r.hget(self.keys.migration(aid), "phase"))


def drain_node(coordinator: Coordinator, node: str, *, wait_s: float = 120.0) -> dict[str, Any]:
    """Mark ``node`` draining (its invoker takes no new work and removes idle containers), migrate
    what runs there, and wait until it holds no container."""
    r, keys = coordinator.r, coordinator.keys
    r.set(keys.node_drain(node), "1", ex=86400)
    moved = [coordinator.migrate(aid).to_dict() for aid in running_on(r, keys, node)]
    deadline = time.monotonic() + wait_s
    empty = False
    while time.monotonic() < deadline:
        raw = r.get(keys.node(node))
        report = NodeReport.model_validate_json(raw) if raw else None
        if report is None or (not report.containers and not running_on(r, keys, node)):
            empty = True
            break
        time.sleep(0.2)
    return {"node": node, "migrations": moved, "empty": empty}
