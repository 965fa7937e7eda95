"""Per-namespace invocation limits: OpenWhisk's ``invocationsPerMinute`` and ``concurrentInvocations``.

The policy is pure (:func:`decide`): counts in, an :class:`Admission` out. :class:`Limiter` keeps
the counts in Redis: a counter per namespace and minute, and a sorted set of in-flight
activation ids scored by their deadline (so work whose consumer died stops counting
once its deadline passes; :meth:`ActivationStore.complete` removes finished ones).

Admission is one Lua script (:data:`ADMIT_SCRIPT`), so one round trip and atomic: it reads the
namespace's limits, counts the caller, decides and, when it admits, queues the invocation (the writes
:meth:`ActivationStore.queue_write` names: this script is where the gateway queues); two concurrent
callers can never both take the last slot, and a throttled invocation is never queued. The limits are
read fresh on every admission (no cache, so ``faas-llm admin limits set`` applies to the very next
invoke): in the script they cost no extra round trip. The script's verdict repeats :func:`decide` (the reference,
unit-tested; a test checks that the two agree) and is checked against it on every call.

With an expected action (:meth:`Limiter.admit_if_current`) the script first checks that the action
the invocation was built from is still the stored one (the SHA-1 of its stored JSON): when it is not
(updated or deleted), the script changes nothing and returns the stored JSON (:class:`StaleAction`),
so a gateway may build invocations from actions it read earlier and still queue only what the current definition says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from faas_llm.activations import STREAM_FIELD, QueueWrite
from faas_llm.auth import KeyCheck
from faas_llm.errors import AuthError, InternalError, RequestError, ThrottledError
from faas_llm.keys import Keys

#: the names OpenWhisk uses for the two limits (``wskadmin limits set``)
RATE_FIELD = "invocationsPerMinute"
CONCURRENCY_FIELD = "concurrentInvocations"


@dataclass(frozen=True)
class NamespaceLimits:
    invocations_per_minute: int
    concurrent_invocations: int


class AdmissionVerdict(str, Enum):
    ADMIT = "admit"
    RATE = "rate"
    CONCURRENCY = "concurrency"


@dataclass(frozen=True)
class Admission:
    """The limit policy's answer for one invocation: admitted, or which limit it is over."""

    verdict: AdmissionVerdict
    count: int = 0
    allowed: int = 0

    @property
    def admitted(self) -> bool:
        return self.verdict is AdmissionVerdict.ADMIT

    @property
    def message(self) -> str:
        if self.verdict is AdmissionVerdict.RATE:
            return f"Too many requests in the last minute (count: {self.count}, allowed: {self.allowed})."
        if self.verdict is AdmissionVerdict.CONCURRENCY:
            return f"Too many concurrent requests in flight (count: {self.count}, allowed: {self.allowed})."
        return "admitted"


def decide(rate_count: int, inflight_count: int, limits: NamespaceLimits) -> Admission:
    """Admit or throttle one invocation.

    ``rate_count`` counts invocations this minute including this one; ``inflight_count``
    counts activations in flight including this one. The rate limit is checked first,
    as in OpenWhisk.
    """
    if rate_count > limits.invocations_per_minute:
        return Admission(AdmissionVerdict.RATE, rate_count, limits.invocations_per_minute)
    if inflight_count > limits.concurrent_invocations:
        return Admission(AdmissionVerdict.CONCURRENCY, inflight_count - 1, limits.concurrent_invocations)
    return Admission(AdmissionVerdict.ADMIT)


#: KEYS: limits hash, in-flight zset, rate window [, pending key, queue stream, queues index
#:       [, action, API key hash]]
#: ARGV: now ms, activation id, expires ms, default rate limit, default concurrency limit
#:       [, invocation JSON, retention s, stream field
#:        [, SHA-1 of the action's JSON or '', the key's stored hash or '']]
#: returns {rate count, in-flight count, rate limit, concurrency limit, stream entry id or false};
#: {-1, 0, 0, 0, the stored action's JSON or false} when the action is not the expected one (no writes);
#: {-2, 0, 0, 0, false} when the caller's API key is no longer stored as expected (revoked; no writes).
#: The key is checked first: a revoked key is 401 whatever the action's state.
ADMIT_SCRIPT = """
if #KEYS > 6 then
  if ARGV[10] ~= '' and redis.call('hget', KEYS[8], 'key_hash') ~= ARGV[10] then
    return {-2, 0, 0, 0, false}
  end
  if ARGV[9] ~= '' then
    local stored = redis.call('get', KEYS[7])
    if (not stored) or redis.sha1hex(stored) ~= ARGV[9] then
      return {-1, 0, 0, 0, stored}
    end
  end
end
local limits = redis.call('hmget', KEYS[1], 'invocationsPerMinute', 'concurrentInvocations')
local rate_limit = tonumber(limits[1] or ARGV[4])
local conc_limit = tonumber(limits[2] or ARGV[5])
redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1])
local rate = redis.call('incr', KEYS[3])
redis.call('expire', KEYS[3], 120)
redis.call('zadd', KEYS[2], ARGV[3], ARGV[2])
local inflight = redis.call('zcard', KEYS[2])
local entry = false
if rate > rate_limit or inflight > conc_limit then
  redis.call('zrem', KEYS[2], ARGV[2])
elseif #KEYS > 3 then
  redis.call('set', KEYS[4], ARGV[6], 'EX', ARGV[7])
  entry = redis.call('xadd', KEYS[5], '*', ARGV[8], ARGV[6])
  redis.call('sadd', KEYS[6], KEYS[5])
end
return {rate, inflight, rate_limit, conc_limit, entry}
"""


def minute_of(epoch_ms: int) -> int:
    return epoch_ms // 60_000


def _int_limit(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise RequestError(f"{name} must be a positive integer, got {value!r}")
    return number


@dataclass(frozen=True)
class Admitted:
    admission: Admission
    #: the queued invocation's stream entry id (when the admission queued it)
    entry_id: str | None = None


@dataclass(frozen=True)
class StaleAction:
    """The admission changed nothing: the action is not the one expected (``current``: its stored
    JSON now, ``None`` when it was deleted)."""

    current: str | None


def action_digest(raw: str | bytes) -> str:
    """The SHA-1 (hex) of an action's stored JSON, as the admission script computes it."""
    return hashlib.sha1(raw.encode() if isinstance(raw, str) else raw).hexdigest()


class Limiter:
    """Counts in Redis, decisions by :func:`decide`."""

    def __init__(self, client: redis.Redis, keys: Keys, defaults: NamespaceLimits,
                 run_admit_script: Callable[..., Any] | None = None) -> None:
        """``run_admit_script(keys=..., args=...)`` runs :data:`ADMIT_SCRIPT` (default: redis-py's
        registered script on ``client``; the gateway passes a leaner one, faas_llm/thread_redis.py)."""
        self.r: Any = client
        self.keys = keys
        self.defaults = defaults
        # EVALSHA; loads itself once after a flush
        self._admit = run_admit_script or self.r.register_script(ADMIT_SCRIPT)

    def limits_for(self, namespace: str) -> NamespaceLimits:
        raw = self.r.hgetall(self.keys.namespace_limits(namespace)) or {}
        over = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        return NamespaceLimits(
            invocations_per_minute=over.get(RATE_FIELD, self.defaults.invocations_per_minute),
            concurrent_invocations=over.get(CONCURRENCY_FIELD, self.defaults.concurrent_invocations),
        )

    def set_limits(
        self, namespace: str, *, invocations_per_minute: int | None = None, concurrent_invocations: int | None = None
    ) -> NamespaceLimits:
        """Override the defaults for one namespace (``None`` leaves a limit as it is)."""
        mapping = {}
        if invocations_per_minute is not None:
            mapping[RATE_FIELD] = _int_limit(RATE_FIELD, invocations_per_minute)
        if concurrent_invocations is not None:
            mapping[CONCURRENCY_FIELD] = _int_limit(CONCURRENCY_FIELD, concurrent_invocations)
        if mapping:
            self.r.hset(self.keys.namespace_limits(namespace), mapping=mapping)
        return self.limits_for(namespace)

    def clear_limits(self, namespace: str) -> None:
        self.r.delete(self.keys.namespace_limits(namespace))

    def admit(self, namespace: str, activation_id: str, expires_ms: int, now_ms: int,
              queue: QueueWrite | None = None, key_check: KeyCheck | None = None) -> Admitted:
        """Count one invocation; raise :class:`ThrottledError` (429) if it is over a limit.

        An admitted activation stays in flight until it completes or ``expires_ms``. With
        ``queue``, an admitted invocation is also queued, in the same atomic round trip. With
        ``key_check`` (only with ``queue``), the caller's API key is confirmed first, in the same
        script: :class:`AuthError` (401), and nothing counted or queued, if it was revoked.
        """
        admitted = self._run(namespace, activation_id, expires_ms, now_ms, queue, None, key_check)
        assert isinstance(admitted, Admitted)  # no expected action: never stale
        return admitted

    def admit_if_current(self, namespace: str, activation_id: str, expires_ms: int, now_ms: int,
                         queue: QueueWrite, action_key: str, digest: str,
                         key_check: KeyCheck | None = None) -> Admitted | StaleAction:
        """:meth:`admit` with ``queue``, only if the action stored at ``action_key`` is the one
        whose JSON has :func:`action_digest` ``digest`` (what the invocation was built from):
        otherwise nothing is counted or queued and the reply is :class:`StaleAction`. ``key_check``
        as in :meth:`admit` (checked before the action)."""
        return self._run(namespace, activation_id, expires_ms, now_ms, queue, (action_key, digest), key_check)

    def _run(self, namespace: str, activation_id: str, expires_ms: int, now_ms: int,
             queue: QueueWrite | None, expect_action: tuple[str, str] | None,
             key_check: KeyCheck | None = None) -> Admitted | StaleAction:
        keys = [self.keys.namespace_limits(namespace), self.keys.inflight(namespace),
                self.keys.rate_window(namespace, minute_of(now_ms))]
        args: list[Any] = [now_ms, activation_id, expires_ms, self.defaults.invocations_per_minute,
                           self.defaults.concurrent_invocations]
        if queue is not None:
            keys += [queue.pending_key, queue.queue, queue.queues_index]
            args += [queue.payload, queue.retention_s, STREAM_FIELD]
            if expect_action is not None or key_check is not None:
                # an absent check: its key is a placeholder (never read), its ARGV empty
                keys += [expect_action[0] if expect_action else keys[0], key_check.key if key_check else keys[0]]
                args += [expect_action[1] if expect_action else "", key_check.key_hash if key_check else ""]
        elif key_check is not None:
            raise ValueError("a key check needs a queue write")
        rate_count, inflight_count, rate_limit, conc_limit, entry = self._admit(keys=keys, args=args)
        if int(rate_count) == -2:
            raise AuthError()
        if int(rate_count) < 0:
            return StaleAction(entry.decode() if isinstance(entry, bytes) else entry)
        admission = decide(int(rate_count), int(inflight_count),
                           NamespaceLimits(int(rate_limit), int(conc_limit)))
        if admission.admitted != (entry is not None if queue is not None else admission.admitted):
            raise InternalError("the admission script and the limit policy disagree")
        if not admission.admitted:
            raise ThrottledError(admission.message)
        entry_id = entry.decode() if isinstance(entry, bytes) else (str(entry) if entry else None)
        return Admitted(admission, entry_id)

    def release(self, namespace: str, activation_id: str) -> None:
        self.r.zrem(self.keys.inflight(namespace), activation_id)

    def inflight_count(self, namespace: str, now_ms: int) -> int:
        return int(self.r.zcount(self.keys.inflight(namespace), f"({now_ms}", "+inf"))
