"""Every Redis key, stream, channel and consumer-group name faas-llm uses.

Nothing else in the code base spells a Redis key: build it here. All names start
with the configured prefix (``Settings.key_prefix``, default ``faas``) so several
deployments can share one Redis and ``SCAN prefix:*`` finds everything of one.

Layout (``P`` = prefix)::

    P:auth:{uuid}                      hash  namespace, key_hash (hashed API key)
    P:namespaces                       set   namespace names
    P:ns:{ns}:subjects                 set   auth uuids of a namespace
    P:ns:{ns}:limits                   hash  per-namespace limit overrides (invocationsPerMinute, ...)
    P:ns:{ns}:action:{name}            str   action JSON
    P:ns:{ns}:actions                  zset  action names (score: updated ms)
    P:act:{id}                         str   activation record JSON (TTL: retention)
    P:act:{id}:pending                 str   the queued invocation until it completes
    P:act:{id}:done                    list  one element pushed when the record is stored (BLPOP)
    P:act:{id}:tokens                  stream  streamed tokens of an activation
    P:act:{id}:claim                   str   idempotency: which consumer runs it
    P:act:{id}:running                 str   where the activation runs now (node, container URL; migration)
    P:ns:{ns}:activations              zset  activation ids (score: start ms)
    P:ns:{ns}:rate:{minute}            str   invocations counted in one minute
    P:ns:{ns}:inflight                 zset  in-flight activation ids (score: deadline ms)
    P:q:{ns}:{action}                  stream  per-action invocation queue
    P:queues                           set   names of all per-action streams
    P:node:{id}                        str   node report JSON (TTL: node_ttl)
    P:nodes                            zset  node ids (score: last heartbeat ms)
    P:node:{id}:cache                  str   cache-agent inventory JSON (TTL)
    P:node:{id}:containers             hash  container id -> container JSON
    P:node:{id}:starts                 stream  start requests for the node's invoker (placement)
    P:node:{id}:running                zset  activation ids running on the node (score: deadline ms)
    P:node:{id}:drain                  str   set while the node is drained (its invoker takes no new work)
    P:starts:{ns}:{action}             zset  start requests in flight (score: expiry ms)
    P:lock:place:{ns}:{action}         str   who is placing the action's instances now (TTL)
    P:runtimes:{ns}:{action}           list  the action's last observed run times (seconds; capped, placement)
    P:model:{name}:status              hash  prefetch/status of a model per node
    P:models:popularity                zset  model -> invocation count (all time)
    P:models:popularity:{minute}       zset  model -> invocations in one minute (TTL: prefetch policy window)
    P:models:kept                      str   the prefetch policy's last plan JSON (TTL)
    P:migration:{id}                   hash  live-migration state of an activation
    P:migration:plan:{ns}:{action}     str   a migration planned so the action's waiting start gets a slot (TTL)
    P:slot:{id}                        str   a run-slot lease on a container, renewed by its holder (TTL)
    P:slot:{id}:grant                  list  the node's answer to a slot lease request (BLPOP)
    P:events                           channel cluster events (pub/sub)
    P:celery:dead                      hash  node -> ms its report was first seen absent (rescuer)
    P:lock:celery:{name}               str   which Celery worker runs a periodic job now (TTL)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builder bound to one prefix. ``Keys(settings.key_prefix)``."""

    prefix: str = "faas"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- auth and namespaces ---------------------------------------------------------
    def auth(self, uuid: str) -> str:
        return self._k("auth", uuid)

    def namespaces(self) -> str:
        return self._k("namespaces")

    def namespace_subjects(self, namespace: str) -> str:
        return self._k("ns", namespace, "subjects")

    def namespace_limits(self, namespace: str) -> str:
        return self._k("ns", namespace, "limits")

    # --- actions -----------------------------------------------------------------------
    def action(self, namespace: str, name: str) -> str:
        return self._k("ns", namespace, "action", name)

    def actions_index(self, namespace: str) -> str:
        return self._k("ns", namespace, "actions")

    # --- activations -------------------------------------------------------------------
    def activation(self, activation_id: str) -> str:
        return self._k("act", activation_id)

    def activation_pending(self, activation_id: str) -> str:
        return self._k("act", activation_id, "pending")

    def activation_done(self, activation_id: str) -> str:
        return self._k("act", activation_id, "done")

    def activation_tokens(self, activation_id: str) -> str:
        return self._k("act", activation_id, "tokens")

    def activation_claim(self, activation_id: str) -> str:
        return self._k("act", activation_id, "claim")

    def activation_running(self, activation_id: str) -> str:
        """Where an activation runs now (node, container URL): what a migration moves."""
        return self._k("act", activation_id, "running")

    def activations_index(self, namespace: str) -> str:
        return self._k("ns", namespace, "activations")

    # --- limits -------------------------------------------------------------------------
    def rate_window(self, namespace: str, minute: int) -> str:
        return self._k("ns", namespace, "rate", str(minute))

    def inflight(self, namespace: str) -> str:
        return self._k("ns", namespace, "inflight")

    # --- queues -------------------------------------------------------------------------
    def action_queue(self, namespace: str, action: str) -> str:
        return self._k("q", namespace, action)

    def queues_index(self) -> str:
        return self._k("queues")

    def consumer_group(self) -> str:
        """The one consumer group every invoker joins on every action queue."""
        return self._k("invokers")

    # --- nodes, containers, caches ------------------------------------------------------
    def node(self, node_id: str) -> str:
        return self._k("node", node_id)

    def nodes_index(self) -> str:
        return self._k("nodes")

    def node_cache(self, node_id: str) -> str:
        return self._k("node", node_id, "cache")

    def node_containers(self, node_id: str) -> str:
        return self._k("node", node_id, "containers")

    def node_running(self, node_id: str) -> str:
        """Activations running on a node (zset scored by deadline ms): what a drain moves off."""
        return self._k("node", node_id, "running")

    def node_drain(self, node_id: str) -> str:
        """Set while a node is drained: its invoker takes no new work and removes idle containers."""
        return self._k("node", node_id, "drain")

    def node_starts(self, node_id: str) -> str:
        """Stream of start requests the placement sent to a node's invoker."""
        return self._k("node", node_id, "starts")

    def action_starts(self, namespace: str, action: str) -> str:
        """Start requests of an action not yet visible as containers (zset scored by expiry ms)."""
        return self._k("starts", namespace, action)

    def placement_lock(self, namespace: str, action: str) -> str:
        return self._k("lock", "place", namespace, action)

    def action_run_times(self, namespace: str, action: str) -> str:
        """The action's most recent run times in seconds (list, newest first, capped): the placement's
        run-time distribution, shared by every invoker."""
        return self._k("runtimes", namespace, action)

    # --- models ---------------------------------------------------------------------------
    def model_status(self, model: str) -> str:
        return self._k("model", model, "status")

    def model_popularity(self) -> str:
        return self._k("models", "popularity")

    def model_popularity_window(self, minute: int) -> str:
        """Invocations per model in one minute (epoch minutes): the prefetch policy's recent history."""
        return self._k("models", "popularity", str(minute))

    def models_kept(self) -> str:
        return self._k("models", "kept")

    # --- migration, events ----------------------------------------------------------------
    def migration(self, activation_id: str) -> str:
        return self._k("migration", activation_id)

    def migration_plan(self, namespace: str, action: str) -> str:
        """A migration the placement started to free a slot for the action's waiting start (TTL)."""
        return self._k("migration", "plan", namespace, action)

    def wait_hold(self, activation_id: str) -> str:
        """A start was once held for this run's end (TTL): a run is waited for at most once, so a hold that
        lapsed (the run went on) is not taken again at the next pass."""
        return self._k("migration", "waited", activation_id)

    def slot_lease(self, lease_id: str) -> str:
        """A run slot held on a container for a run outside its invoker's dispatch (a migrated resume)."""
        return self._k("slot", lease_id)

    def slot_grant(self, lease_id: str) -> str:
        return self._k("slot", lease_id, "grant")

    def events(self) -> str:
        return self._k("events")

    # --- celery ---------------------------------------------------------------------------
    def celery_dead_nodes(self) -> str:
        return self._k("celery", "dead")

    def celery_lock(self, name: str) -> str:
        return self._k("lock", "celery", name)

    @staticmethod
    def node_queue(node_id: str) -> str:
        """Celery queue of work that must run on one node (a Celery queue name, not a key)."""
        return f"node.{node_id}"

    def pattern(self) -> str:
        """SCAN/KEYS pattern matching every key of this prefix."""
        return self._k("*")
