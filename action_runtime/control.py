"""Control of in-flight runs: deadlines, and export requests that stop a run at a token boundary.

A :class:`RunControl` is shared by the thread that decodes and the threads that serve
``/export``: the decoder publishes its tokens after every step and checks, between steps,
whether it has been asked to stop; an exporter asks and waits for the exported state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from faas_llm.errors import ConflictError, NotFoundError
from faas_llm.genparams import GenerationState


@dataclass(frozen=True)
class Snapshot:
    generated_ids: list[int]
    finished: bool


class RunControl:
    """One run's deadline, its published progress and its export request."""

    def __init__(self, run_id: str, deadline_ms: int | None = None) -> None:
        self.run_id = run_id
        self.deadline_ms = deadline_ms
        self.prompt_ids: list[int] = []
        self._lock = threading.Lock()
        self._generated: list[int] = []
        self._finished = False
        self._stop_at: int | None = None
        self._stop_requested = False
        self._exported = threading.Event()
        self._state: GenerationState | None = None

    # --- the decoding thread ---------------------------------------------------------
    def past_deadline(self) -> bool:
        return self.deadline_ms is not None and time.time() * 1000 >= self.deadline_ms

    def publish(self, token_id: int) -> None:
        with self._lock:
            self._generated.append(token_id)

    def should_stop(self, generated: int) -> bool:
        """Whether the run must stop for an export now that it has ``generated`` tokens."""
        with self._lock:
            if self._stop_requested:
                return True
            return self._stop_at is not None and generated >= self._stop_at

    def exported(self, state: GenerationState) -> None:
        """The run stopped for an export with ``state``."""
        with self._lock:
            self._state = state
            self._finished = True
        self._exported.set()

    def finished(self) -> None:
        """The run ended on its own (or failed): an export waiting on it gets nothing."""
        with self._lock:
            self._finished = True
        self._exported.set()

    # --- exporters -------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(list(self._generated), self._finished)

    def request_stop(self, at_tokens: int | None = None) -> None:
        """Stop at the first boundary (or once ``at_tokens`` tokens exist) and export."""
        with self._lock:
            if at_tokens is None:
                self._stop_requested = True
            else:
                self._stop_at = at_tokens if self._stop_at is None else min(self._stop_at, at_tokens)

    def wait_exported(self, timeout_s: float) -> GenerationState | None:
        """The exported state, or ``None`` when the run ended without one (or ``timeout_s`` passed)."""
        self._exported.wait(timeout_s)
        with self._lock:
            return self._state


class RunRegistry:
    """The runs in flight in this process, by run (activation) id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunControl] = {}

    @contextmanager
    def track(self, control: RunControl) -> Iterator[RunControl]:
        with self._lock:
            if control.run_id in self._runs:
                raise ConflictError(f"activation {control.run_id} is already running here")
            self._runs[control.run_id] = control
        try:
            yield control
        finally:
            control.finished()
            with self._lock:
                self._runs.pop(control.run_id, None)

    def get(self, run_id: str) -> RunControl:
        with self._lock:
            control = self._runs.get(run_id)
        if control is None:
            raise NotFoundError(f"no run {run_id!r} is in flight here")
        return control

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)
