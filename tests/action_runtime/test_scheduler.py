"""The batching engine's pure parts: the block pool and the scheduler's decisions, without a model."""

from __future__ import annotations

import pytest

from action_runtime.batching.blocks import NULL_BLOCK, BlockPool, blocks_for, blocks_for_budget
from action_runtime.batching.scheduler import Chunk, Scheduler, StepPlan
from action_runtime.batching.sequence import Sequence, Status
from faas_llm.genparams import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def seq(seq_id: int, prompt: int, max_new: int = 100) -> Sequence:
    return Sequence(seq_id, list(range(prompt)), prompt, max_new, GREEDY)


def advance(plan: StepPlan) -> None:
    """What the loop does after a step: the chunks are computed, each sampling chunk adds a token."""
    for chunk in plan.chunks:
        chunk.seq.num_computed += chunk.length
        if chunk.samples:
            chunk.seq.tokens.append(7)


def lengths(plan: StepPlan) -> dict[int, int]:
    return {c.seq.seq_id: c.length for c in plan.chunks}


# --- blocks ------------------------------------------------------------------------------------


def test_block_arithmetic() -> None:
    assert [blocks_for(n, 16) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
    assert blocks_for_budget(1024 * 1024, 1024, 16) == 64
    assert blocks_for_budget(10, 1024, 16) == 2  # never fewer than the null block and one more


def test_pool_never_hands_out_the_null_block_and_reuses_freed_ones() -> None:
    pool = BlockPool(5, 4)
    assert pool.capacity_tokens == 16 and pool.free == 4
    table: list[int] = []
    assert pool.grow(table, 9) == [1, 2, 3]
    assert NULL_BLOCK not in table and pool.extra_blocks(table, 12) == 0 and pool.extra_blocks(table, 13) == 1
    with pytest.raises(MemoryError):
        pool.allocate(2)
    pool.release(table)
    assert table == [] and pool.free == 4
    assert pool.allocate(1) == [1]  # the lowest (most recently freed) first
    with pytest.raises(ValueError):
        BlockPool(1, 4)


# --- the scheduler -----------------------------------------------------------------------------


def test_decodes_always_run_and_prompts_are_chunked_within_the_budget() -> None:
    sched = Scheduler(BlockPool(100, 4), max_running=8, step_tokens=8)
    a, b = seq(1, 3), seq(2, 20)
    sched.add(a)
    plan = sched.schedule()
    assert lengths(plan) == {1: 3} and plan.chunks[0].samples
    advance(plan)
    sched.add(b)
    plan = sched.schedule()
    assert lengths(plan) == {1: 1, 2: 7}  # a's decode, then b's first chunk with what is left
    assert not next(c for c in plan.chunks if c.seq is b).samples
    advance(plan)
    advance(sched.schedule())
    plan = sched.schedule()
    assert lengths(plan) == {1: 1, 2: 6} and plan.chunks[-1].samples  # b's prompt done after 7 + 7 + 6
    advance(plan)
    plan = sched.schedule()
    assert lengths(plan) == {1: 1, 2: 1}


def test_admission_is_first_come_first_served_up_to_the_cap() -> None:
    sched = Scheduler(BlockPool(100, 4), max_running=2, step_tokens=64)
    for i in range(3):
        sched.add(seq(i, 5))
    plan = sched.schedule()
    assert lengths(plan) == {0: 5, 1: 5}
    assert [s.seq_id for s in sched.waiting] == [2]
    advance(plan)
    sched.remove(sched.running[0])  # it ended: the next one joins at once
    assert lengths(sched.schedule()) == {1: 1, 2: 5}


def test_a_request_queues_instead_of_running_out_of_blocks() -> None:
    sched = Scheduler(BlockPool(6, 4), max_running=8, step_tokens=64, watermark=0.0)  # 5 usable blocks
    a = seq(1, 16)  # 4 blocks
    sched.add(a)
    advance(sched.schedule())
    b = seq(2, 8)  # needs 2: only 1 free
    sched.add(b)
    plan = sched.schedule()
    assert lengths(plan) == {1: 1} and b.status is Status.WAITING and not b.blocks
    sched.remove(a)
    assert lengths(sched.schedule()) == {2: 8}


def test_the_newest_running_sequence_is_preempted_for_a_block_and_recomputes_later() -> None:
    sched = Scheduler(BlockPool(5, 4), max_running=8, step_tokens=64, watermark=0.0)  # 4 usable blocks
    old, new = seq(1, 8), seq(2, 7)
    sched.add(old)
    sched.add(new)
    plan = sched.schedule()
    advance(plan)  # old: 9 tokens (2 blocks), new: 8 tokens (2 blocks), pool empty
    assert sched.pool.free == 0
    plan = sched.schedule()  # old needs a third block for position 8: new gives way
    assert plan.preempted == [new] and lengths(plan) == {1: 1}
    assert new.status is Status.WAITING and new.num_computed == 0 and not new.blocks
    assert sched.waiting[0] is new and new.stats.preemptions == 1
    assert new.tokens == [*range(7), 7]  # its generated token is kept: recomputed, not redrawn
    advance(plan)
    sched.remove(old)
    plan = sched.schedule()
    assert lengths(plan) == {2: 8} and plan.chunks[0].samples  # prompt and generated token, in one chunk


def test_a_sequence_that_is_itself_the_newest_gives_way_to_nobody_else() -> None:
    sched = Scheduler(BlockPool(3, 4), max_running=8, step_tokens=64, watermark=0.0)  # 2 usable blocks
    a, b = seq(1, 4), seq(2, 4)
    sched.add(a)
    sched.add(b)
    advance(sched.schedule())  # each holds one full block; both now decode into a second one
    plan = sched.schedule()
    assert plan.preempted == [b] and lengths(plan) == {1: 1}


def test_parked_sessions_are_evicted_before_anyone_is_preempted() -> None:
    sched = Scheduler(BlockPool(4, 4), max_running=8, step_tokens=64, watermark=0.0)  # 3 usable blocks
    session = Sequence(9, list(range(8)), 8, 0, None)
    sched.add(session)
    advance(sched.schedule())
    assert sched.park("s", session) == [] and session.status is Status.PARKED and sched.pool.free == 1
    a = seq(1, 4)
    sched.add(a)
    advance(sched.schedule())
    plan = sched.schedule()  # a needs a second block: the session goes, a runs
    assert plan.evicted == [session] and lengths(plan) == {1: 1} and not plan.preempted
    assert sched.take_parked("s") is None


def test_a_resume_takes_over_a_matching_session_and_recomputes_its_last_token() -> None:
    sched = Scheduler(BlockPool(20, 4), max_running=8, step_tokens=64)
    session = Sequence(9, list(range(10)), 10, 0, None)
    sched.add(session)
    advance(sched.schedule())
    sched.park("s", session)
    resumed = Sequence(1, list(range(12)), 8, 50, GREEDY)
    held = sched.take_parked("s")
    assert held is session
    sched.adopt(resumed, held)
    assert resumed.num_computed == 10 and len(resumed.blocks) == 3 and not session.blocks
    sched.add(resumed)
    assert lengths(sched.schedule()) == {1: 2}
    exact = Sequence(2, list(range(10)), 10, 5, GREEDY)
    again = Sequence(10, list(range(10)), 10, 0, None)
    sched.add(again)
    advance(sched.schedule())
    sched.park("t", again)
    sched.adopt(exact, sched.take_parked("t"))  # type: ignore[arg-type]
    assert exact.num_computed == 9  # the last token is computed again for its logits


def test_a_session_that_does_not_match_is_dropped() -> None:
    sched = Scheduler(BlockPool(20, 4), max_running=8, step_tokens=64)
    session = Sequence(9, [5, 5, 5, 5], 4, 0, None)
    sched.add(session)
    advance(sched.schedule())
    free = sched.pool.free
    sched.park("s", session)
    other = seq(1, 6)
    sched.adopt(other, sched.take_parked("s"))  # type: ignore[arg-type]
    assert other.num_computed == 0 and not other.blocks and sched.pool.free == free + 1


def test_chunk_samples_only_at_the_last_token_of_a_generating_sequence() -> None:
    s = seq(1, 10)
    assert Chunk(s, 0, 10).samples and not Chunk(s, 0, 9).samples
    prefill = Sequence(2, list(range(10)), 10, 0, None)
    assert not Chunk(prefill, 0, 10).samples
