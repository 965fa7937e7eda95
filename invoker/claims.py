"""Taking an activation's run claim and registering its run, in one round trip (one Lua script).

Before a worker runs a stream entry it needs, atomically:

1. the record: stored already (a redelivery of a finished activation) -> the entry is acked and
   deleted (``XACK`` + ``XDEL``) in the same script and nothing runs;
2. the run claim (``keys.activation_claim``, ``SET NX PX claim_idle_ms``): held by another consumer
   -> nothing changes (the entry stays pending; the reclaimer revisits it); held by this consumer
   already (an entry it took back) -> it runs;
3. when it runs (and its deadline has not passed): the running-run registry
   (``keys.activation_running`` = the :class:`faas_llm.migration.RunningRun` JSON with the TTL
   :func:`faas_llm.migration.register_run` gives it, ``keys.node_running`` += the id) and the
   model's popularity counts (:func:`faas_llm.popularity.record_invocation`'s writes).

The registry entry is removed by the script that stores the record and acks the entry
(:meth:`faas_llm.activations.ActivationStore.complete_and_ack`), so a warm run costs three round
trips: ``XREADGROUP``, this script, the completion script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from faas_llm.activations import ScriptRunner
from faas_llm.keys import Keys
from faas_llm.types import now_ms

#: KEYS: record, claim, stream, running, node running set, popularity of the minute, popularity (all time)
#: ARGV: consumer, claim ms, group, entry id, register ('1'/'0'), running JSON, running ttl ms, activation id,
#: deadline ms, model, popularity window ttl s.
#: Returns {1} finished (acked, deleted), {0, owner} held by another consumer, {2} run it.
CLAIM_SCRIPT = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('xack', KEYS[3], ARGV[3], ARGV[4])
  redis.call('xdel', KEYS[3], ARGV[4])
  return {1}
end
if not redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local owner = redis.call('get', KEYS[2])
  if owner ~= ARGV[1] then
    return {0, owner or ''}
  end
end
if ARGV[5] == '1' then
  redis.call('set', KEYS[4], ARGV[6], 'PX', ARGV[7])
  redis.call('zadd', KEYS[5], ARGV[9], ARGV[8])
  redis.call('zincrby', KEYS[6], 1, ARGV[10])
  redis.call('expire', KEYS[6], ARGV[11])
  redis.call('zincrby', KEYS[7], 1, ARGV[10])
end
return {2}
"""

FINISHED, HELD, RUN = 1, 0, 2


@dataclass(frozen=True)
class Claim:
    """What :meth:`RunClaims.claim` found: :data:`FINISHED`, :data:`HELD` (by ``owner``) or :data:`RUN`."""

    outcome: int
    owner: str | None = None


def running_json(run: dict[str, Any]) -> str:
    """The registry value: ``RunningRun(**run).model_dump_json()``'s text, without pydantic (the invoker made
    every field itself: strings and ints, in :class:`faas_llm.migration.RunningRun`'s field order)."""
    return json.dumps(run, separators=(",", ":"), ensure_ascii=False)


class RunClaims:
    """The claim + registration script bound to one Redis client and key prefix."""

    def __init__(self, r: Any, keys: Keys, consumer: str, group: str, claim_ms: int, popularity_window_s: int,
                 *, run_script: ScriptRunner | None = None) -> None:
        """``run_script``: how the script is sent (default: through ``r``; see :mod:`faas_llm.thread_redis`)."""
        self.r, self.keys, self.consumer, self.group = r, keys, consumer, group
        self.claim_ms = claim_ms
        self.popularity_ttl_s = popularity_window_s + 120  # as faas_llm.popularity.record_invocation
        self._script = r.register_script(CLAIM_SCRIPT)
        self._run: ScriptRunner = run_script or (lambda script, keys, args: script(keys=keys, args=args))

    def claim(self, activation_id: str, queue: str, entry_id: str, run: dict[str, Any] | None) -> Claim:
        """Check the record, take the claim and (``run``: the RunningRun fields, ``None``: do not register)
        register the run, atomically."""
        k = self.keys
        at = now_ms()
        if run is not None:
            deadline = int(run["deadline_ms"])
            register = ("1", running_json(run), max(1000, deadline - at + 60_000), deadline, run["model"])
        else:
            register = ("0", "", 0, 0, "")
        flag, body, ttl_ms, score, model = register
        reply = self._run(
            self._script,
            [k.activation(activation_id), k.activation_claim(activation_id), queue,
             k.activation_running(activation_id), k.node_running(str(run["node"]) if run else "-"),
             k.model_popularity_window(at // 60_000), k.model_popularity()],
            [self.consumer, self.claim_ms, self.group, entry_id, flag, body, ttl_ms, activation_id, score,
             model, self.popularity_ttl_s])
        outcome = int(reply[0])
        owner = reply[1] if len(reply) > 1 else None
        if isinstance(owner, bytes):
            owner = owner.decode()
        return Claim(outcome, owner or None)
