"""Applying a migration or a hold in the simulator (planned by :mod:`faas_llm.migration_policy`, see
:mod:`bench.sim.migration`): the victim's slot goes to the waiting model when the victim has moved or ended."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.sim.cluster import Instance, InstState
from bench.sim.events import HOLD_LAPSE, MIN_HOLD_S, RUN_DONE

if TYPE_CHECKING:
    from bench.sim.engine import Simulator


def begin_migration(sim: Simulator, victim: Instance, dest: int, resume_s: float, waiting_model: int) -> bool:
    """Load the victim's model on ``dest``; when it has resumed there, the victim's slot loads ``waiting_model``."""
    target = sim.start_load(dest, victim.model, migrating=True)
    if target is None:
        return False
    target.takes_over = victim.id
    target.resume_s = resume_s
    victim.evict_for = waiting_model
    sim.starting[waiting_model] += 1  # the reserved load covers one queued request
    sim.result.migrations += 1
    return True


def hold_for(sim: Simulator, victim: Instance, waiting_model: int, expected_wait_s: float) -> bool:
    """Hold ``victim``'s slot for ``waiting_model``: when its run ends, that model loads there; if it has
    not ended after max(:data:`MIN_HOLD_S`, 3 x ``expected_wait_s``), the hold lapses and the model is
    placed again (the invoker's hold expires so)."""
    if victim.evict_for is not None:
        return False
    victim.evict_for = waiting_model
    victim.held = victim.waited = True
    sim.starting[waiting_model] += 1  # the held slot covers one queued request
    sim.result.waits += 1
    sim.push(sim.now + max(MIN_HOLD_S, 3 * expected_wait_s), HOLD_LAPSE, (victim, waiting_model))
    return True


def hold_lapse(sim: Simulator, victim: Instance, waiting_model: int) -> None:
    if not victim.held or victim.evict_for != waiting_model or victim.state is not InstState.BUSY:
        return  # it ended (the start took its slot) or was removed
    victim.evict_for = None
    victim.held = False
    sim.starting[waiting_model] -= 1
    sim.result.waits_lapsed += 1
    sim.cover(waiting_model)


def move_done(sim: Simulator, target: Instance) -> None:
    victim = sim.instances.get(target.takes_over) if target.takes_over is not None else None
    target.takes_over = None
    if victim is None or victim.state is not InstState.BUSY:
        target.state = InstState.STARTING  # the victim finished first: an ordinary instance now
        sim.ready(target)
        return
    target.state = InstState.BUSY
    target.fresh = False
    target.request = victim.request
    target.run_start = victim.run_start
    target.run_end = victim.run_end
    sim.busy[target.model][target.id] = target
    sim.push(target.run_end, RUN_DONE, target)
    release_source(sim, victim)


def release_source(sim: Simulator, victim: Instance) -> None:
    node, waiting = victim.node, victim.evict_for
    assert waiting is not None
    victim.evict_for = None
    sim.remove(victim)
    sim.starting[waiting] -= 1
    if sim.start_load(node, waiting) is None:
        sim.cover(waiting)  # the room went elsewhere meanwhile: place it again
    sim.retry_blocked()

