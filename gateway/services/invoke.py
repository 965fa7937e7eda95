"""Invoking an action: limits, the queued invocation, the blocking wait (no HTTP here).

The gateway never talks to a container. One round trip admits and queues an invocation: the admission
script of :mod:`faas_llm.limits` (:meth:`Limiter.admit_if_current`) confirms the caller's key and the
action it was built from, checks the namespace's limits and queues it (the writes of
:meth:`ActivationStore.queue_write`). When the caller blocks, the gateway waits for the record an
invoker stores with :meth:`ActivationStore.complete` (:func:`wait_record_json`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from faas_llm.activations import BLOCK_SLICE_S, ActivationStore
from faas_llm.auth import Identity
from faas_llm.errors import (
    ActivationStatus,
    ApplicationError,
    DeveloperError,
    FaasLLMError,
    InternalError,
    PayloadTooLargeError,
    RequestError,
    store_unavailable,
)
from faas_llm.limits import Limiter, StaleAction
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import Action, ActivationRecord, Invocation, new_activation_id, now_ms
from gateway.services.actions import ActionService
from gateway.services.checked_actions import DigestCheckedActions


@dataclass(frozen=True)
class Submitted:
    action: Action
    invocation: Invocation

    @property
    def activation_id(self) -> str:
        return self.invocation.activation_id


@dataclass(frozen=True)
class InvokeOutcome:
    activation_id: str
    #: the stored record's JSON text (passed on to the client unparsed); None: still running
    #: (non-blocking, or the wait ran out)
    record_json: str | None


log = logging.getLogger(__name__)

#: pause between tries of a blocking wait while Redis cannot serve (it refuses at once when down)
OUTAGE_PAUSE_S = 0.2
#: checked admissions retried with the re-read action (each retry means the action changed meanwhile)
STALE_RETRIES = 5


def merge_params(defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The action's parameters are defaults; the invocation's params win."""
    return {**defaults, **params}


def blocking_wait_ms(action: Action, override_ms: int | None, cap_ms: int) -> int:
    """How long a blocking invoke waits: ``?timeout=`` if given, else the action's timeout; at most the cap."""
    return min(override_ms if override_ms is not None else action.limits.timeout, cap_ms)


def failure_error(code: ActivationStatus, result: Any, fallback: str) -> FaasLLMError:
    """The error an unsuccessful activation's result stands for.

    An application error whose result carries a 4xx ``http_status`` (the runtime refused the
    client's input, e.g. a prompt longer than the model's context) is the client's:
    :class:`RequestError` (400, OpenAI's ``invalid_request_error``), not a failed action."""
    message = result.get("error") if isinstance(result, dict) else None
    text = str(message) if message else fallback
    if code == ActivationStatus.APPLICATION_ERROR:
        client_status = result.get("http_status") if isinstance(result, dict) else None
        if client_status == PayloadTooLargeError.http_status:
            return PayloadTooLargeError(text)
        if isinstance(client_status, int) and 400 <= client_status < 500:
            return RequestError(text)
        return ApplicationError(text)
    if code == ActivationStatus.DEVELOPER_ERROR:
        return DeveloperError(text)
    return InternalError(text)


def record_error(record: ActivationRecord) -> FaasLLMError | None:
    """The error an unsuccessful record stands for (``None`` for a success)."""
    return stored_record_error(record.model_dump(mode="json"))


def stored_record_error(record: dict[str, Any]) -> FaasLLMError | None:
    """:func:`record_error` of a record as stored (its JSON parsed, not revalidated: the invoker
    built it as an :class:`ActivationRecord`)."""
    response = record["response"]
    code = response["statusCode"]
    if code == ActivationStatus.SUCCESS:
        return None
    return failure_error(ActivationStatus(code), response.get("result"),
                         f"The activation {record['activationId']} failed ({response.get('status')}).")


def wait_record_json(store: ActivationStore, activation_id: str, timeout_s: float,
                     direct: ThreadRedis | None = None) -> str | None:
    """The record of an activation queued a moment ago, as its stored JSON, once stored; ``None`` if it
    is not stored within ``timeout_s``.

    :meth:`ActivationStore.wait_json` with ``just_queued``, in one round trip per wake-up instead of
    two: the ``BLMOVE`` on the done signal and the record's ``GET`` are sent together (a pipeline, not
    a transaction). Redis runs the ``GET`` only once the ``BLMOVE`` returns, and the signal is raised
    in the same script that stores the record, so the ``GET`` sees it. With ``direct``, on the calling
    thread's own connection. A Redis that cannot serve for now (:func:`store_unavailable`: restarting,
    stalled, loading) does not end the wait: it is tried again after a pause until the deadline, and
    its error is raised only if it is still away then."""
    done = store.keys.activation_done(activation_id)
    record_key = store.keys.activation(activation_id)
    deadline = time.monotonic() + timeout_s
    raw: Any = None
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            raw = _wake_and_read(store, done, record_key, min(remaining, BLOCK_SLICE_S), direct)
        except redis.RedisError as exc:
            if store_unavailable(exc) is None:
                raise
            time.sleep(max(0.0, min(OUTAGE_PAUSE_S, deadline - time.monotonic())))
            continue
        if raw is not None:
            break
    else:
        raw = store.r.get(record_key)
    return raw.decode() if isinstance(raw, bytes) else raw


def _wake_and_read(store: ActivationStore, done: str, record_key: str, block_s: float,
                   direct: ThreadRedis | None) -> Any:
    """One wake-up: ``BLMOVE`` on the done signal (at most ``block_s``), then the record's ``GET``."""
    if direct is not None:
        return direct.pipeline([("BLMOVE", done, done, "LEFT", "RIGHT", block_s), ("GET", record_key)])[1]
    pipe = store.r.pipeline(transaction=False)
    pipe.blmove(done, done, timeout=block_s, src="LEFT", dest="RIGHT")
    pipe.get(record_key)
    return pipe.execute()[1]


def status_code_http(code: int) -> int:
    """OpenWhisk's blocking invoke for a record's ``statusCode``: 200 for a success, 502 for an
    application or developer error (the client's bad input included: the activation ran and
    reported it), 500 for an internal error."""
    if code == ActivationStatus.SUCCESS:
        return 200
    return 502 if code in (ActivationStatus.APPLICATION_ERROR, ActivationStatus.DEVELOPER_ERROR) else 500


class InvokeService:
    def __init__(
        self, actions: ActionService, activations: ActivationStore, limiter: Limiter, settings: Settings,
        direct: ThreadRedis | None = None,
    ) -> None:
        self.direct = direct
        self.actions = actions
        self.activations = activations
        self.limiter = limiter
        self.settings = settings
        self.checked_actions = DigestCheckedActions(actions.store)

    def submit(
        self, identity: Identity, namespace: str, name: str, params: dict[str, Any], transaction_id: str,
        *, stream: bool = False,
    ) -> Submitted:
        """Admit and queue one invocation of ``namespace/name``.

        The invocation is built from the worker's cached action; the admission script queues it only
        if that is still the stored action (else it returns the stored one, and this retries with it)."""
        activation_id = new_activation_id()
        cached = self.checked_actions.get(namespace, name)
        for attempt in range(STALE_RETRIES + 1):
            action = cached.action
            start = now_ms()
            deadline = start + action.limits.timeout
            invocation = Invocation(
                activation_id=activation_id, namespace=namespace, action=name, action_version=action.version,
                subject=identity.subject, params=merge_params(action.default_params(), params),
                transaction_id=transaction_id, enqueued_ms=start, deadline_ms=deadline, stream=stream,
            )
            # Admission and queueing are one atomic round trip: a throttled invocation is never queued.
            # A consumer that died mid-run stops counting against the namespace after the expiry.
            expires = deadline + self.settings.blocking_wait_max_ms
            queue = self.activations.queue_write(invocation)
            if attempt == STALE_RETRIES:
                # the action changed at every try: queue with the definition just read (no check)
                self.limiter.admit(namespace, activation_id, expires, start, queue=queue, key_check=identity.check)
                break
            outcome = self.limiter.admit_if_current(namespace, activation_id, expires, start, queue,
                                                    cached.key, cached.digest, identity.check)
            if not isinstance(outcome, StaleAction):
                break
            cached = self.checked_actions.replace(namespace, name, outcome.current)
        return Submitted(action, invocation)

    def wait_queued_json(self, activation_id: str, wait_ms: int) -> str | None:
        """The stored JSON of the record of an activation this worker just queued (see
        :func:`wait_record_json`), ``None`` if it is not stored within ``wait_ms``."""
        return wait_record_json(self.activations, activation_id, wait_ms / 1000, self.direct)

    def invoke(
        self, identity: Identity, namespace: str, name: str, params: dict[str, Any], transaction_id: str,
        *, blocking: bool, timeout_ms: int | None = None,
    ) -> InvokeOutcome:
        """Queue one invocation and, ``blocking``, wait for its record. A blocking invoke whose wait ends
        with Redis still away is answered as one whose wait ran out (202 and its id, as OpenWhisk does):
        it was accepted, and a 503 would invite the client to run it again."""
        submitted = self.submit(identity, namespace, name, params, transaction_id)
        aid = submitted.activation_id
        if not blocking:
            return InvokeOutcome(aid, None)
        wait_ms = blocking_wait_ms(submitted.action, timeout_ms, self.settings.blocking_wait_max_ms)
        try:
            return InvokeOutcome(aid, self.wait_queued_json(aid, wait_ms))
        except redis.RedisError as exc:
            if store_unavailable(exc) is None:
                raise
            log.warning("activation %s: Redis still cannot serve at the end of its blocking wait (%r): "
                        "answered as accepted", aid, exc)
            return InvokeOutcome(aid, None)
