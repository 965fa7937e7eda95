"""The simulator's event kinds and the constants its parts share."""

from __future__ import annotations

ARRIVE, LOAD_DONE, RUN_DONE, EXPIRE, MOVE_DONE, BOOT_DONE, TICK, LEASE_END, HOLD_LAPSE = range(9)
#: a start held for a run about to end waits at most max(this, 3 x the expected wait), as the invoker's
#: MigrationPlacer hold (invoker.migrate_place.MIN_HOLD_MS)
MIN_HOLD_S = 15.0
#: slots and memory of the oracle's nodes
UNLIMITED = 1 << 40
