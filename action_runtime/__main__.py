"""``faas-llm-runtime`` / ``python -m action_runtime``: serve the action runtime (one process)."""

from __future__ import annotations

import logging
import os

# Before torch loads its OpenMP runtime: idle intra-op threads sleep instead of spinning. With the
# default (active) policy, on a node whose cores the gateway, the invoker and other runtimes share,
# a one-token run of the tiny model cost 19-60 ms of CPU instead of ~3 ms (2 threads, load 6):
# the second thread spins at every barrier while the core it wants is busy (issue 11). An operator
# who sets OMP_WAIT_POLICY keeps theirs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from action_runtime.server import RuntimeServer
from faas_llm.settings import Settings, get_settings


def main(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    RuntimeServer(settings).run()


if __name__ == "__main__":
    main()
