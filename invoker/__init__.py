"""The invoker: container pool, locality-aware placement and dispatch (one per node)."""
