"""The activation store and the activation's lifecycle: the contract between the gateway (producer)
and the invokers (consumers).

An activation is in one of four states (:class:`ActivationState`); :meth:`ActivationStore.where` says
which, and where it runs. Each transition is one atomic write (a script or a MULTI), done in one
place::

              queue                claim                   finish
    UNKNOWN ─────────> QUEUED ─────────────> RUNNING ──────────────> DONE
                         ^  │                  │
                         │  └────── fail ──────┼───────────────────> DONE
                         └───── release ───────┘

- **queue** (gateway): the admission script (:data:`faas_llm.limits.ADMIT_SCRIPT`,
  :meth:`faas_llm.limits.Limiter.admit`) checks the caller's key, the action and the namespace's
  limits and writes :meth:`ActivationStore.queue_write`'s keys in the same round trip: the pending copy
  (``act:{id}:pending``), the entry on the action's stream (``q:{ns}:{action}``, field ``invocation`` =
  :class:`~faas_llm.types.Invocation` JSON) and the stream's registration in ``queues``.
  :meth:`ActivationStore.submit` writes the same keys without the limits (tests, benches). The
  activation id is the idempotency key.
- **claim**, **finish**, **fail**, **release** (invoker): :class:`invoker.lifecycle.RunLifecycle`. A
  claim is the run claim ``act:{id}:claim`` (the consumer's name, a lease the consumer renews) and the
  running-run registry ``act:{id}:running``; finish and fail store the record exactly once (``SET NX``:
  a redelivered invocation that completes again is ignored) and ack the stream entry in the same script
  (:data:`COMPLETE_AND_ACK_SCRIPT`), waking blocking waiters (``act:{id}:done``); release is a run
  given up (the invoker stops) or a consumer that died: its lease lapses and the invokers' cleanup puts
  the entry back on the queue.

Streamed tokens are appended to ``act:{id}:tokens`` (:meth:`ActivationStore.append_tokens`).
``get`` is ``None`` until the record is stored (the API's 404), as in OpenWhisk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.commands.core import Script

from faas_llm.keys import Keys
from faas_llm.types import ActivationRecord, Invocation

STREAM_FIELD = "invocation"
TOKEN_FIELD = "chunk"
#: the last chunk of a token stream carries this key (``{"done": true, ...}``)
TOKENS_DONE = "done"
#: longest single blocking Redis call (must stay below the client's socket timeout)
BLOCK_SLICE_S = 1.0


#: KEYS: record, activations index, pending copy, in-flight zset, done signal, token stream
#: ARGV: record JSON, retention s, start ms, activation id. Returns 1 when it stored the record.
_STORE_RECORD = """
local stored = 0
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  stored = 1
  redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
  redis.call('del', KEYS[3])
  redis.call('zrem', KEYS[4], ARGV[4])
  redis.call('rpush', KEYS[5], '1')
  redis.call('expire', KEYS[5], 300)
  redis.call('expire', KEYS[6], 300)
end
"""
COMPLETE_SCRIPT = _STORE_RECORD + "return stored\n"
#: :data:`COMPLETE_SCRIPT`, then KEYS[7] the stream, KEYS[8] the run claim; ARGV[5] the consumer
#: group, ARGV[6] the entry id, ARGV[7] the consumer whose claim is released. Optional KEYS[9]: the
#: running-run registry entry (deleted) and KEYS[10..]: node running sets (the activation id removed).
COMPLETE_AND_ACK_SCRIPT = _STORE_RECORD + """
redis.call('xack', KEYS[7], ARGV[5], ARGV[6])
redis.call('xdel', KEYS[7], ARGV[6])
if redis.call('get', KEYS[8]) == ARGV[7] then
  redis.call('del', KEYS[8])
end
if #KEYS >= 9 then
  redis.call('del', KEYS[9])
  for i = 10, #KEYS do
    redis.call('zrem', KEYS[i], ARGV[4])
  end
end
return stored
"""


#: sends a registered script: ``(script, keys, args) -> reply``
ScriptRunner = Callable[[Script, Sequence[Any], Sequence[Any]], Any]


def _through_client(script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    return script(keys=keys, args=args)


@dataclass(frozen=True)
class QueueWrite:
    """The writes that queue one invocation: the pending copy (``SET ... EX``), the stream entry
    (field :data:`STREAM_FIELD`) and the queue's registration in the queues index."""

    pending_key: str
    queue: str
    queues_index: str
    payload: str
    retention_s: int


@dataclass(frozen=True)
class TokenChunk:
    id: str
    data: dict[str, Any]

    @property
    def done(self) -> bool:
        return bool(self.data.get(TOKENS_DONE))


class ActivationState(StrEnum):
    """Where an activation is in its lifecycle (the module docstring draws the transitions)."""

    #: no trace: never accepted, or past its retention
    UNKNOWN = "unknown"
    #: accepted, waiting for a consumer (also: its consumer died and the entry waits to be put back)
    QUEUED = "queued"
    #: a live consumer holds its run claim
    RUNNING = "running"
    #: its record is stored (a success or an error): final
    DONE = "done"


@dataclass(frozen=True)
class Whereabouts:
    """:meth:`ActivationStore.where`'s answer: the state, and for a running activation who runs it, where."""

    state: ActivationState
    #: the consumer holding the run claim (``RUNNING``)
    consumer: str | None = None
    #: the node running it now, after a live migration the destination (``RUNNING``, once registered)
    node: str | None = None


def state_of(record: bool, claim_owner: str | None, pending: bool) -> ActivationState:
    """The state the keys mean (pure): the record decides, then a live claim, then the pending copy."""
    if record:
        return ActivationState.DONE
    if claim_owner:
        return ActivationState.RUNNING
    return ActivationState.QUEUED if pending else ActivationState.UNKNOWN


class ActivationStore:
    """Activation records, pending invocations and token streams in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, retention_s: int = 7 * 86400, *,
                 run_script: ScriptRunner | None = None) -> None:
        """``run_script(script, keys, args)``: how the completion scripts are sent (default: through
        ``client``; the invoker sends them on its own per-thread connection, ``faas_llm.thread_redis``)."""
        # redis-py's stubs type replies as unions of everything; treat replies as Any here.
        self.r: Any = client
        self.keys = keys
        self.retention_s = retention_s
        # EVALSHA; each reloads itself after a script flush or a Redis restart
        self._complete = self.r.register_script(COMPLETE_SCRIPT)
        self._complete_and_ack = self.r.register_script(COMPLETE_AND_ACK_SCRIPT)
        self._run_script: ScriptRunner = run_script or _through_client

    # --- producing ------------------------------------------------------------------
    def queue_write(self, invocation: Invocation) -> QueueWrite:
        """What queuing ``invocation`` writes (:meth:`submit` writes it; the limiter's admission can
        write it in the same round trip, see :meth:`faas_llm.limits.Limiter.admit`)."""
        k = self.keys
        return QueueWrite(
            pending_key=k.activation_pending(invocation.activation_id),
            queue=k.action_queue(invocation.namespace, invocation.action),
            queues_index=k.queues_index(), payload=invocation.model_dump_json(), retention_s=self.retention_s,
        )

    def submit(self, invocation: Invocation) -> str:
        """Queue an invocation; returns the stream entry id."""
        write = self.queue_write(invocation)
        pipe = self.r.pipeline(transaction=True)
        pipe.set(write.pending_key, write.payload, ex=write.retention_s)
        pipe.xadd(write.queue, {STREAM_FIELD: write.payload})
        pipe.sadd(write.queues_index, write.queue)
        entry_id = pipe.execute()[1]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    @staticmethod
    def decode_message(fields: Mapping[Any, Any]) -> Invocation:
        """The invocation inside a stream entry's fields (bytes or str keys)."""
        raw = fields.get(STREAM_FIELD) if STREAM_FIELD in fields else fields.get(STREAM_FIELD.encode())
        if raw is None:
            raise ValueError("stream entry has no invocation field")
        return Invocation.model_validate_json(raw)

    def pending(self, activation_id: str) -> Invocation | None:
        raw = self.r.get(self.keys.activation_pending(activation_id))
        return Invocation.model_validate_json(raw) if raw else None

    def where(self, activation_id: str) -> Whereabouts:
        """Where the activation is now (:class:`ActivationState`): one read of its keys, in one round trip."""
        k = self.keys
        pipe = self.r.pipeline(transaction=True)  # one snapshot: a transition between two reads cannot mislead
        pipe.exists(k.activation(activation_id))
        pipe.get(k.activation_claim(activation_id))
        pipe.exists(k.activation_pending(activation_id))
        pipe.get(k.activation_running(activation_id))
        record, owner, pending, running = pipe.execute()
        owner = owner.decode() if isinstance(owner, bytes) else owner
        state = state_of(bool(record), owner, bool(pending))
        if state is not ActivationState.RUNNING:
            return Whereabouts(state)
        node = None
        if running:
            try:
                node = str(json.loads(running)["node"])
            except (ValueError, KeyError, TypeError):
                node = None
        return Whereabouts(state, owner, node)

    # --- completing -----------------------------------------------------------------
    def complete(self, record: ActivationRecord) -> bool:
        """Store ``record`` unless one is stored already; True if this call stored it.

        One atomic round trip (:data:`COMPLETE_SCRIPT`): the record (``SET NX``) and, only when
        it was stored, its index entry, the pending copy and in-flight count dropped, the done
        signal raised for blocking waiters."""
        keys, args = self._complete_call(record)
        return bool(self._run_script(self._complete, keys, args))

    def complete_and_ack(self, record: ActivationRecord, queue: str, group: str, entry_id: str,
                         claim: str, consumer: str, ran_on: Sequence[str] = ()) -> bool:
        """:meth:`complete`, then ``XACK`` + ``XDEL`` of the invocation's stream entry and the release
        of the run claim ``claim`` if ``consumer`` holds it, in one script (one round trip). The ack
        comes after the record in the script, so a failure part-way never acks an entry whose
        record is not stored (a redelivery finds the record and only acks).

        ``ran_on``: the nodes the run was registered on (``keys.node_running``); the same script then
        removes the run from the running-run registry (``keys.activation_running`` and those sets)."""
        keys, args = self._complete_call(record)
        keys += [queue, claim]
        if ran_on:
            aid = record.activationId
            keys += [self.keys.activation_running(aid), *(self.keys.node_running(n) for n in dict.fromkeys(ran_on))]
        return bool(self._run_script(self._complete_and_ack, keys, [*args, group, entry_id, consumer]))

    def _complete_call(self, record: ActivationRecord) -> tuple[list[str], list[Any]]:
        k = self.keys
        aid = record.activationId
        keys = [k.activation(aid), k.activations_index(record.namespace), k.activation_pending(aid),
                k.inflight(record.namespace), k.activation_done(aid), k.activation_tokens(aid)]
        return keys, [record.model_dump_json(), self.retention_s, record.start, aid]

    # --- reading --------------------------------------------------------------------
    def get(self, activation_id: str) -> ActivationRecord | None:
        raw = self.get_json(activation_id)
        return ActivationRecord.model_validate_json(raw) if raw else None

    def get_json(self, activation_id: str) -> str | None:
        """The stored record as its JSON text (what :meth:`complete` wrote), or ``None``."""
        raw = self.r.get(self.keys.activation(activation_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    def wait(self, activation_id: str, timeout_s: float, *, just_queued: bool = False) -> ActivationRecord | None:
        """Block until the record is stored or ``timeout_s`` passes (then ``None``)."""
        raw = self.wait_json(activation_id, timeout_s, just_queued=just_queued)
        return ActivationRecord.model_validate_json(raw) if raw else None

    def wait_json(self, activation_id: str, timeout_s: float, *, just_queued: bool = False) -> str | None:
        """:meth:`wait`, returning the record's JSON text (a reply can pass it on unparsed).

        ``just_queued``: the caller queued the activation a moment ago, so no record can exist yet
        and the read before blocking is skipped (the done signal is a list that stays set for
        300 s, so a record stored meanwhile is still seen at once)."""
        if not just_queued or timeout_s <= 0:
            raw = self.get_json(activation_id)
            if raw is not None or timeout_s <= 0:
                return raw
        done = self.keys.activation_done(activation_id)
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            # BLMOVE back onto the same list leaves the signal in place for other waiters. Block in
            # slices shorter than any sane client socket timeout (redis-py's default is 5 s).
            if self.r.blmove(done, done, timeout=min(remaining, BLOCK_SLICE_S), src="LEFT", dest="RIGHT"):
                break
        return self.get_json(activation_id)

    def query(
        self,
        namespace: str,
        *,
        name: str | None = None,
        skip: int = 0,
        limit: int = 30,
        since: int | None = None,
        upto: int | None = None,
    ) -> list[ActivationRecord]:
        """Newest first, like OpenWhisk; ``since``/``upto`` are epoch ms bounds on ``start``."""
        index = self.keys.activations_index(namespace)
        lo = "-inf" if since is None else since
        hi = "+inf" if upto is None else upto
        out: list[ActivationRecord] = []
        # pages of at most 1000 ids: a huge skip must not become a COUNT Redis refuses (out of range)
        offset, page = 0, min(max(limit + skip, 50), 1000)
        skipped = 0
        while len(out) < limit:
            ids = self.r.zrevrangebyscore(index, hi, lo, start=offset, num=page)
            if not ids:
                break
            offset += len(ids)
            raws = self.r.mget([self.keys.activation(i.decode() if isinstance(i, bytes) else i) for i in ids])
            for raw in raws:
                if raw is None:  # expired record: drop its index entry lazily
                    continue
                record = ActivationRecord.model_validate_json(raw)
                if name is not None and record.name != name:
                    continue
                if skipped < skip:
                    skipped += 1
                    continue
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def count(self, namespace: str, *, since: int | None = None, upto: int | None = None) -> int:
        lo = "-inf" if since is None else since
        hi = "+inf" if upto is None else upto
        return int(self.r.zcount(self.keys.activations_index(namespace), lo, hi))

    def prune_index(self, namespace: str, now_ms: int | None = None) -> int:
        """Drop index entries older than the retention (their records have expired)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now - self.retention_s * 1000
        return int(self.r.zremrangebyscore(self.keys.activations_index(namespace), "-inf", cutoff))

    # --- token streams ----------------------------------------------------------------
    def append_tokens(self, activation_id: str, chunk: Mapping[str, Any]) -> str:
        """Append one chunk (e.g. ``{"text": "...", "token_ids": [...]}``) to the activation's stream."""
        key = self.keys.activation_tokens(activation_id)
        entry = self.r.xadd(key, {TOKEN_FIELD: json.dumps(chunk)}, maxlen=100_000, approximate=True)
        self.r.expire(key, self.retention_s if chunk.get(TOKENS_DONE) else 3600)
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def read_tokens(self, activation_id: str, after: str = "0", block_ms: int = 1000) -> list[TokenChunk]:
        """Chunks after entry id ``after``, waiting up to ``block_ms`` (at most one slice) for the first one."""
        key = self.keys.activation_tokens(activation_id)
        resp = self.r.xread({key: after}, count=256, block=min(block_ms, int(BLOCK_SLICE_S * 1000)))
        out: list[TokenChunk] = []
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                raw = fields.get(TOKEN_FIELD) if TOKEN_FIELD in fields else fields.get(TOKEN_FIELD.encode())
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                out.append(TokenChunk(eid, json.loads(raw)))
        return out

    def iter_tokens(self, activation_id: str, timeout_s: float, block_ms: int = 500) -> Iterator[TokenChunk]:
        """Follow the token stream until a ``done`` chunk, the record is stored, or the timeout."""
        deadline = time.monotonic() + timeout_s
        after = "0"
        while time.monotonic() < deadline:
            chunks = self.read_tokens(activation_id, after, block_ms)
            for chunk in chunks:
                after = chunk.id
                yield chunk
                if chunk.done:
                    return
            if not chunks and self.get(activation_id) is not None:
                # completed without a done chunk (e.g. failed before streaming): drain and stop
                for chunk in self.read_tokens(activation_id, after, 1):
                    yield chunk
                return
