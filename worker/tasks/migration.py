"""``faas_llm.migrate(activation_id, destination)`` and ``faas_llm.drain(node)``: live migration.

Both are idempotent: a migration already in progress for the activation is reported, not
started twice; one of an activation that no longer runs does nothing; a drain re-run migrates
what still runs on the node. See :mod:`faas_llm.migration` for the protocol and :mod:`worker.coordinator` for the mover.
"""

from __future__ import annotations

from typing import Any

from worker.coordinator import Coordinator, drain_node


def migrate_task(task: Any, activation_id: str, destination: str | None = None,
                 stop_at: int | None = None) -> dict[str, Any]:
    app = task.app
    coordinator = Coordinator(app.faas_settings, app.redis, app.keys)
    return coordinator.migrate(activation_id, destination, stop_at=stop_at).to_dict()


def drain_task(task: Any, node: str, wait_s: float = 300.0) -> dict[str, Any]:
    app = task.app
    return drain_node(Coordinator(app.faas_settings, app.redis, app.keys), node, wait_s=wait_s)
