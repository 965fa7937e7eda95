"""The step loop: one thread runs every step of the runtime's sequences.

A step: take what arrived and what was cancelled (at the step boundary, never mid-step), end the
sequences past their deadline or asked to stop for an export, let the scheduler plan the step, run one
forward over every scheduled chunk, then sample each sequence that reached its last token and send the
token to its reader. A sequence that ends leaves before the next step; its blocks are free at once.
Readers (the threads serving requests) only put into the inbox and read their sequence's outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import torch

from action_runtime.batching.scheduler import Chunk, Scheduler
from action_runtime.batching.sequence import Ended, EndReason, Sequence, Status, Token
from action_runtime.sampling import choose_token

log = logging.getLogger(__name__)


class StepModel(Protocol):
    """A forward the loop drives (:class:`.paged.PagedForward`, :class:`.percall.PerCallForward`)."""

    def run(self, chunks: list[Chunk], new_blocks: list[int]) -> tuple[list[Chunk], torch.Tensor | None]:
        """Compute ``chunks``; the chunks that sample, in order, and their logits rows."""
        ...

    def release(self, seq: Sequence) -> None:
        """``seq`` left (ended or preempted): forget what the forward keeps for it."""
        ...


class BatchLoop:
    """Owns the scheduler; see the module docstring. Thread-safe entry points: :meth:`submit`,
    :meth:`cancel`, :meth:`prefill`, :meth:`close`."""

    def __init__(self, model: StepModel, scheduler: Scheduler, name: str = "batch") -> None:
        self.model = model
        self.scheduler = scheduler
        self._cond = threading.Condition()
        self._inbox: list[tuple[Sequence, str | None]] = []
        self._cancelled: list[Sequence] = []
        self._parks: dict[int, str] = {}  # prefill sequence -> session name
        self._closed = False
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- entry points (any thread) --------------------------------------------------
    def submit(self, seq: Sequence, session: str | None = None) -> None:
        """Queue ``seq``; with ``session``, it takes over that prefill session's cache where it matches."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.append((seq, session))
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """End ``seq`` at the next step boundary (its reader is gone, or it hit a stop string)."""
        with self._cond:
            self._cancelled.append(seq)
            self._cond.notify()

    def prefill(self, session: str, seq: Sequence, timeout_s: float | None = None) -> Ended:
        """Compute every token of prefill-only ``seq`` and park its cache as ``session`` (extending the
        session's cache where it holds a prefix); blocks until done."""
        with self._cond:
            self._parks[seq.seq_id] = session
        self.submit(seq, session)
        try:
            item = seq.outbox.get(timeout=timeout_s)
        except Exception:
            self.cancel(seq)
            raise
        assert isinstance(item, Ended)
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # --- the loop ---------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._inbox and not self._cancelled and self.scheduler.idle:
                        self._cond.wait()
                    if self._closed:
                        break
                    arrived, self._inbox = self._inbox, []
                    cancelled, self._cancelled = self._cancelled, []
                try:
                    self._boundary(arrived, cancelled)
                    self._step()
                except Exception as exc:  # never the loop: every sequence ends with the error
                    log.exception("batch step failed")
                    self._fail_all(exc)
        self._fail_all(RuntimeError("the engine closed"))

    def _boundary(self, arrived: list[tuple[Sequence, str | None]], cancelled: list[Sequence]) -> None:
        scheduler = self.scheduler
        for seq, session in arrived:
            if session is not None:
                held = scheduler.take_parked(session)
                if held is not None:
                    scheduler.adopt(seq, held)
                    self.model.release(held)
            if seq.generates and seq.generated >= seq.max_new:
                self._end(seq, EndReason.LENGTH)
                continue
            scheduler.add(seq)
        for seq in cancelled:
            if seq.status is not Status.ENDED:
                self._end(seq, EndReason.CANCELLED)
        for seq in [*scheduler.running, *scheduler.waiting]:
            control = seq.control
            if control is None:
                continue
            if control.past_deadline():
                self._end(seq, EndReason.TIMEOUT)
            elif control.should_stop(seq.generated):
                self._end(seq, EndReason.MIGRATED)

    def _end(self, seq: Sequence, reason: EndReason, error: BaseException | None = None) -> None:
        if seq.status is not Status.PARKED:
            self.scheduler.remove(seq)
        self.model.release(seq)
        self._parks.pop(seq.seq_id, None)
        seq.end(reason, error)

    def _step(self) -> None:
        plan = self.scheduler.schedule()
        for seq in [*plan.preempted, *plan.evicted]:
            self.model.release(seq)
        if not plan:
            return
        started = time.perf_counter()
        try:
            sampled, logits = self.model.run(plan.chunks, plan.new_blocks)
        except Exception as exc:  # this step's sequences end with the error; the others go on
            log.exception("a batch step failed")
            for chunk in plan.chunks:
                self._end(chunk.seq, EndReason.FAILED, exc)
            return
        self.steps += 1
        size = len(plan.chunks)
        for chunk in plan.chunks:
            seq = chunk.seq
            seq.num_computed += chunk.length
            seq.stats.add(size)
            if seq.scheduled_at is None:
                seq.scheduled_at = started
            if not seq.generates and seq.num_computed == len(seq.tokens):
                self._park(seq)
        if logits is not None:
            self._sample(sampled, logits)

    def _park(self, seq: Sequence) -> None:
        with self._cond:
            session = self._parks.pop(seq.seq_id, None)
        if session is None:
            self._end(seq, EndReason.PREFILLED)
            return
        for dropped in self.scheduler.park(session, seq):
            self.model.release(dropped)
        seq.outbox.put(Ended(EndReason.PREFILLED, []))

    def _sample(self, sampled: list[Chunk], logits: torch.Tensor) -> None:
        greedy = [i for i, c in enumerate(sampled) if c.seq.sampling is not None and c.seq.sampling.greedy]
        tokens: dict[int, int] = {}
        if greedy:
            rows = logits if len(greedy) == len(sampled) else logits[greedy]
            tokens.update(zip(greedy, rows.argmax(dim=-1).tolist(), strict=True))
        for i, chunk in enumerate(sampled):
            seq = chunk.seq
            assert seq.sampling is not None
            token = tokens.get(i)
            if token is None:
                token = choose_token(logits[i], seq.sampling, seq.seed, seq.generated)
            index = seq.generated
            if seq.computed_at is None:
                seq.computed_at = time.perf_counter()
            seq.tokens.append(token)
            seq.outbox.put(Token(token, index))
            if token in seq.eos_ids:
                self._end(seq, EndReason.STOP)
            elif seq.generated >= seq.max_new:
                self._end(seq, EndReason.LENGTH)

    def _fail_all(self, exc: BaseException) -> None:
        scheduler = self.scheduler
        for seq in [*scheduler.running, *scheduler.waiting]:
            self._end(seq, EndReason.FAILED, exc)

