"""Per-namespace invocation limits: OpenWhisk's ``invocationsPerMinute`` and ``concurrentInvocations``.

The policy is pure (:func:`decide`): counts in, a decision out. :class:`Limiter` keeps
the counts in Redis: a counter per namespace and minute, and a sorted set of in-flight
activation ids scored by their deadline (so work whose consumer died stops counting
once its deadline passes; :meth:`ActivationStore.complete` removes finished ones).

Admission counts the caller first and then decides, all in one transaction, so two
concurrent callers can never both take the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from faas_llm.errors import RequestError, ThrottledError
from faas_llm.keys import Keys

#: the names OpenWhisk uses for the two limits (``wskadmin limits set``)
RATE_FIELD = "invocationsPerMinute"
CONCURRENCY_FIELD = "concurrentInvocations"


@dataclass(frozen=True)
class NamespaceLimits:
    invocations_per_minute: int
    concurrent_invocations: int


class Verdict(str, Enum):
    ADMIT = "admit"
    RATE = "rate"
    CONCURRENCY = "concurrency"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    count: int = 0
    allowed: int = 0

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.ADMIT

    @property
    def message(self) -> str:
        if self.verdict is Verdict.RATE:
            return f"Too many requests in the last minute (count: {self.count}, allowed: {self.allowed})."
        if self.verdict is Verdict.CONCURRENCY:
            return f"Too many concurrent requests in flight (count: {self.count}, allowed: {self.allowed})."
        return "admitted"


def decide(rate_count: int, inflight_count: int, limits: NamespaceLimits) -> Decision:
    """Admit or throttle one invocation.

    ``rate_count`` counts invocations this minute including this one; ``inflight_count``
    counts activations in flight including this one. The rate limit is checked first,
    as in OpenWhisk.
    """
    if rate_count > limits.invocations_per_minute:
        return Decision(Verdict.RATE, rate_count, limits.invocations_per_minute)
    if inflight_count > limits.concurrent_invocations:
        return Decision(Verdict.CONCURRENCY, inflight_count - 1, limits.concurrent_invocations)
    return Decision(Verdict.ADMIT)


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


class Limiter:
    """Counts in Redis, decisions by :func:`decide`."""

    def __init__(self, client: redis.Redis, keys: Keys, defaults: NamespaceLimits) -> None:
        self.r: Any = client
        self.keys = keys
        self.defaults = defaults

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

    def admit(self, namespace: str, activation_id: str, expires_ms: int, now_ms: int) -> Decision:
        """Count one invocation; raise :class:`ThrottledError` (429) if it is over a limit.

        An admitted activation stays in flight until it completes or ``expires_ms``.
        """
        limits = self.limits_for(namespace)
        inflight = self.keys.inflight(namespace)
        rate_key = self.keys.rate_window(namespace, minute_of(now_ms))
        pipe = self.r.pipeline(transaction=True)
        pipe.zremrangebyscore(inflight, "-inf", now_ms)
        pipe.incr(rate_key)
        pipe.expire(rate_key, 120)
        pipe.zadd(inflight, {activation_id: expires_ms})
        pipe.zcard(inflight)
        _, rate_count, _, _, inflight_count = pipe.execute()
        decision = decide(int(rate_count), int(inflight_count), limits)
        if not decision.admitted:
            self.r.zrem(inflight, activation_id)
            raise ThrottledError(decision.message)
        return decision

    def release(self, namespace: str, activation_id: str) -> None:
        self.r.zrem(self.keys.inflight(namespace), activation_id)

    def inflight_count(self, namespace: str, now_ms: int) -> int:
        return int(self.r.zcount(self.keys.inflight(namespace), f"({now_ms}", "+inf"))
