"""Celery tasks of faas-llm, registered on an app by :func:`register` (see :mod:`worker.celery_app`).

Every task is idempotent (a redelivery after a lost worker does no harm):

- ``faas_llm.prefetch`` (:mod:`.prefetch`): fill a node's DRAM or SSD tier; runs on ``node.<id>``;
- ``faas_llm.migrate`` (:mod:`.migration`): live-migrate a running activation to another node;
- ``faas_llm.drain`` (:mod:`.migration`): move everything off a node;
- ``faas_llm.tick`` (:mod:`.tick`): the rescuer and the prefetch policy, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faas_llm.jobs import FaasCelery


def register(app: FaasCelery) -> None:
    from faas_llm.jobs import TASK_DRAIN, TASK_MIGRATE, TASK_PREFETCH, TASK_TICK
    from worker.tasks import migration, prefetch, tick

    app.task(name=TASK_PREFETCH, bind=True, acks_late=True, reject_on_worker_lost=True)(prefetch.prefetch_task)
    app.task(name=TASK_MIGRATE, bind=True, acks_late=True, reject_on_worker_lost=True)(migration.migrate_task)
    app.task(name=TASK_DRAIN, bind=True, acks_late=True, reject_on_worker_lost=True)(migration.drain_task)
    app.task(name=TASK_TICK, bind=True)(tick.tick_task)
