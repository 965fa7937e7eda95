"""Which sequences run in the next step, how many tokens each, and who gives way (pure policy).

vLLM's v1 scheduler in outline (``vllm/v1/core/sched/scheduler.py``): a step has a token budget; the
running sequences go first, oldest first, then waiting ones are admitted in arrival order while the
budget, the sequence cap and the free blocks allow. Every running decode (one token) is in every
step; prompts are prefilled in chunks of what the budget leaves, so a long prompt never stalls the
others' decoding for more than one chunk. When a running sequence needs a block and none is free, a
parked prefill session is dropped first, then the newest running sequence is preempted: its blocks
are freed and it goes back to the front of the queue, to recompute its cache (prompt and tokens so
far) when it runs again. A new request never preempts a running one: it waits.

No I/O and no model: :class:`Scheduler` mutates only sequences' ``status``, ``blocks`` and
``num_computed`` and the :class:`~.blocks.BlockPool`; the step loop does the rest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from action_runtime.batching.blocks import BlockPool
from action_runtime.batching.sequence import Sequence, Status


@dataclass(frozen=True)
class Chunk:
    """Positions ``start .. start + length - 1`` of ``seq`` are computed in this step."""

    seq: Sequence
    start: int
    length: int

    @property
    def samples(self) -> bool:
        """The chunk reaches the sequence's last token: its logits give the next token."""
        return self.seq.generates and self.start + self.length == len(self.seq.tokens)


@dataclass
class StepPlan:
    chunks: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    new_blocks: list[int] = field(default_factory=list)
    """Blocks handed out in this step (their stale contents are cleared before use)."""
    evicted: list[Sequence] = field(default_factory=list)
    """Prefill sessions dropped to free their blocks."""

    def __bool__(self) -> bool:
        return bool(self.chunks)


class Scheduler:
    """The queue, the running set and the parked prefill sessions of one engine."""

    def __init__(self, pool: BlockPool, max_running: int, step_tokens: int, max_sessions: int = 4,
                 watermark: float = 0.01) -> None:
        self.pool = pool
        self.max_running = max(1, max_running)
        self.step_tokens = max(1, step_tokens)
        self.max_sessions = max_sessions
        #: free blocks an admission leaves for the running sequences to grow into
        self.watermark_blocks = int(watermark * pool.num_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.parked: OrderedDict[str, Sequence] = OrderedDict()

    # --- membership ------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take ``seq`` out wherever it is (it ended) and free its blocks."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.release(seq.blocks)

    def park(self, name: str, seq: Sequence) -> list[Sequence]:
        """Keep a computed prefill session's blocks under ``name``; returns the sessions dropped for room."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        old = self.parked.pop(name, None)
        dropped = [old] if old is not None else []
        seq.status = Status.PARKED
        self.parked[name] = seq
        while len(self.parked) > self.max_sessions:
            dropped.append(self.parked.popitem(last=False)[1])
        for gone in dropped:
            self.pool.release(gone.blocks)
        return dropped

    def take_parked(self, name: str) -> Sequence | None:
        """The parked session ``name``, out of the parked set (its blocks now belong to the caller)."""
        return self.parked.pop(name, None)

    def adopt(self, seq: Sequence, session: Sequence) -> None:
        """Give ``seq`` the cache of ``session`` where its tokens are a prefix of ``seq``'s; the last token
        is always computed again (its logits are not kept), rewriting the same values."""
        held = session.num_computed
        if held and seq.tokens[:held] == session.tokens[:held] and not seq.blocks:
            seq.blocks, session.blocks = session.blocks, []
            seq.cache, session.cache = session.cache, None
            seq.num_computed = min(held, len(seq.tokens) - 1)
        self.pool.release(session.blocks)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    # --- the step --------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = StepPlan()
        decodes = [s for s in self.running if s.to_compute == 1]
        for seq in decodes:
            if seq.status is Status.RUNNING:
                self._place(plan, seq, 1)
        budget = max(self.step_tokens - len(plan.chunks), self.pool.block_size)
        for seq in [s for s in self.running if s.to_compute > 1]:
            if budget <= 0 or seq.status is not Status.RUNNING:
                continue
            n = min(seq.to_compute, budget)
            if self._place(plan, seq, n):
                budget -= n
        if not plan.preempted:
            self._admit(plan, budget)
        return plan

    def _place(self, plan: StepPlan, seq: Sequence, n: int) -> bool:
        """Blocks for ``n`` more positions of running ``seq``, making room by eviction or preemption."""
        while not self.pool.can_allocate(self.pool.extra_blocks(seq.blocks, seq.num_computed + n)):
            if self.parked:
                evicted = self.parked.popitem(last=False)[1]
                self.pool.release(evicted.blocks)
                plan.evicted.append(evicted)
                continue
            victim = self.running[-1]
            self._preempt(plan, victim)
            if victim is seq:
                return False
        plan.new_blocks.extend(self.pool.grow(seq.blocks, seq.num_computed + n))
        plan.chunks.append(Chunk(seq, seq.num_computed, n))
        return True

    def _preempt(self, plan: StepPlan, seq: Sequence) -> None:
        self.running.remove(seq)
        plan.chunks = [c for c in plan.chunks if c.seq is not seq]
        self.pool.release(seq.blocks)
        seq.num_computed = 0
        seq.cache = None
        seq.status = Status.WAITING
        seq.stats.preemptions += 1
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)

    def _admit(self, plan: StepPlan, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            n = min(seq.to_compute, budget)
            need = self.pool.extra_blocks(seq.blocks, seq.num_computed + n)
            if need + self.watermark_blocks > self.pool.free and not (self.idle_but(seq) and need <= self.pool.free):
                break  # queued until blocks free up (never at a running sequence's expense)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            plan.new_blocks.extend(self.pool.grow(seq.blocks, seq.num_computed + n))
            plan.chunks.append(Chunk(seq, seq.num_computed, n))
            budget -= n

    def idle_but(self, seq: Sequence) -> bool:
        """Nothing runs: the watermark (room for running sequences to grow) protects no one."""
        return not self.running
