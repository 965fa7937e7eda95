"""The worker process: a Celery worker for this node's queue and the default one.

It runs the background work off the request path: checkpoint prefetch into the local cache agent,
the live-migration coordinator, node drains, and the periodic tick (rescuer, prefetch policy).
It may touch Redis, the local cache agent and action runtimes' migration routes; it imports ``faas_llm`` only.
"""
