"""The invoker (one per node): pulls its actions' invocations from the Redis queues, runs them on a pool of
action-runtime containers it starts, places cold starts by locality, and stores each activation's record.
It may touch Redis (queues, records, node reports, leases), its containers' runtimes and the Celery broker."""
