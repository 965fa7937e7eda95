"""The migration coordinator: moves a running activation to another node (run by ``faas_llm.migrate``).

See :mod:`faas_llm.migration` for the protocol (steps 1-3 are here) and the records both sides share.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from pydantic import BaseModel

from faas_llm import slot_lease, starts
from faas_llm.errors import ConflictError, FaasLLMError, NoCapacityError, NotFoundError
from faas_llm.keys import Keys
from faas_llm.migration import (
    ABORTED,
    ACTIVE_PHASES,
    FAILED,
    FELL_BACK,
    HANDING_OFF,
    MAX_ROUNDS,
    PREFILLING,
    PREPARING,
    RESUMED,
    RunningRun,
    running,
    running_on,
)
from faas_llm.runtime_protocol import (
    EXPORT_PATH,
    PREFILL_PATH,
    ExportReply,
    ExportSnapshot,
    PrefillReply,
    export_body,
    prefill_body,
    read_reply,
)
from faas_llm.settings import Settings
from faas_llm.types import NodeReport, now_ms

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


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
    def _post(self, url: str, path: str, body: dict[str, Any], reply: type[M], timeout_s: float) -> M:
        """``body`` to ``path`` of the runtime at ``url``; its reply (errors: :func:`read_reply`)."""
        resp = self.http.post(f"{url}{path}", json=body, timeout=timeout_s)
        return read_reply(reply, f"{path} on {url}", resp.status_code, resp.json() if resp.content else None)

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
        return starts.warm_url(self.r, self.keys, node, run.namespace, run.action)

    def ensure_container(self, node: str, run: RunningRun, timeout_s: float) -> str:
        """A ready container of the action on ``node`` (asking its invoker to start one if needed)."""
        return starts.ensure_container(self.r, self.keys, node, run.namespace, run.action, timeout_s,
                                       run.activation_id)

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
            self._post(run.url, EXPORT_PATH, export_body(aid, at_tokens=stop_at), ExportReply, 40.0)
        except (ConflictError, NotFoundError) as exc:
            out.phase, out.reason = ABORTED, f"the source finished first ({exc.message})"
        except FaasLLMError as exc:  # no capacity, or a runtime that failed or broke the protocol
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
            if snap.finished:
                raise ConflictError("the run finished")
            generated = snap.generated_ids
            gap = len(generated) - prefilled
            if prefilled >= 0 and gap <= gap_limit:
                break
            self._post(dest_url, PREFILL_PATH, prefill_body(aid, snap.prompt_ids + generated), PrefillReply, 120.0)
            prefilled = len(generated)
            rounds += 1
            self._set(aid, rounds=rounds, prefilled=prefilled)
        return rounds, max(0, gap)

    def _snapshot(self, run: RunningRun, aid: str, settle_s: float = 5.0) -> ExportSnapshot:
        """The source's tokens so far (the run is registered just before its ``/run`` arrives: retry a
        moment on 404 while no record exists)."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                return self._post(run.url, EXPORT_PATH, export_body(aid, stop=False), ExportSnapshot, 30.0)
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
