"""A small test-side consumer of the gateway's queues, speaking the documented contract.

It reads every per-action stream with the invokers' consumer group (XREADGROUP, XACK),
streams tokens with :meth:`ActivationStore.append_tokens` and stores each record with
:meth:`ActivationStore.complete`, as an invoker does. Instead of running a model it
"generates" deterministic words, so tests can assert exact outputs. Test-only knobs
arrive as invocation params (usually as action default parameters):

- ``_fail``: ``application`` | ``developer`` | ``internal`` -> an unsuccessful record; ``request``
  -> the application error a runtime reports for a prompt longer than the model's context, classified
  by :func:`faas_llm.runtime_protocol.classify` as the invoker does (with its stream's last chunk)
- ``_delay_ms``: wait this long before completing
- ``_gate``: wait, after the first token, until the test calls :meth:`open_gate` with this name
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.runtime_protocol import classify
from faas_llm.types import ActivationRecord, ActivationResponse, Invocation, KeyValue, now_ms

TOO_LONG = "the prompt has 1200 tokens; the model's context is 512 tokens, which leaves no room to generate"
#: Redis stopped, killed or still loading (the gateway's outage tests)
STORE_AWAY = (redis.ConnectionError, redis.TimeoutError)
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


def expected_words(prompt: str, max_tokens: int) -> list[str]:
    """The deterministic "generation" for a prompt: one word per token."""
    seed = sum(prompt.encode())
    return [WORDS[(seed + i) % len(WORDS)] for i in range(max_tokens)]


def prompt_of(params: dict[str, Any]) -> str:
    if isinstance(params.get("messages"), list):
        return "\n".join(str(m.get("content", "")) for m in params["messages"])
    return str(params.get("prompt", ""))


class QueueConsumer:
    def __init__(self, redis_url: str, keys: Keys, name: str = "test-consumer") -> None:
        self.client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
        self.keys = keys
        self.name = name
        self.store = ActivationStore(self.client, keys)
        self.seen: list[Invocation] = []
        self._gates: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._groups: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="queue-consumer", daemon=True)
        self._workers: list[threading.Thread] = []

    # --- control ------------------------------------------------------------------------
    def start(self) -> QueueConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for gate in list(self._gates.values()):
            gate.set()
        self._thread.join(timeout=10)
        for worker in self._workers:
            worker.join(timeout=10)
        self.client.close()

    def gate(self, name: str) -> threading.Event:
        return self._gates.setdefault(name, threading.Event())

    def open_gate(self, name: str) -> None:
        self.gate(name).set()

    # --- the loop --------------------------------------------------------------------------
    def _join_groups(self) -> dict[str, str]:
        for queue in self.client.smembers(self.keys.queues_index()):
            if queue in self._groups:
                continue
            try:
                self.client.xgroup_create(queue, self.keys.consumer_group(), id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(queue)
        return {q: ">" for q in self._groups}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._take()
            except STORE_AWAY:  # a test stopped or killed Redis: wait for it, as an invoker does
                time.sleep(0.1)
            except redis.ResponseError:  # the test flushed the database under us: rejoin
                self._groups.clear()

    def _take(self) -> None:
        streams = self._join_groups()
        if not streams:
            time.sleep(0.02)
            return
        replies = self.client.xreadgroup(self.keys.consumer_group(), self.name, streams, count=16, block=100)
        for queue, entries in replies or []:
            for entry_id, fields in entries:
                invocation = ActivationStore.decode_message(fields)
                self.seen.append(invocation)
                worker = threading.Thread(target=self._run, args=(invocation,), daemon=True)
                self._workers.append(worker)
                worker.start()
                self.client.xack(queue, self.keys.consumer_group(), entry_id)

    # --- one activation ----------------------------------------------------------------------
    def _run(self, inv: Invocation) -> None:
        started = now_ms()
        params = inv.params
        max_tokens = int(params.get("max_tokens", 16))
        words = expected_words(prompt_of(params), max_tokens)
        prompt_tokens = len(prompt_of(params).split())
        fail = params.get("_fail")
        if not fail:
            for i, word in enumerate(words):
                if inv.stream:
                    self.store.append_tokens(inv.activation_id, {"text": (" " if i else "") + word, "token_ids": [i]})
                if i == 0 and params.get("_gate"):
                    self.gate(str(params["_gate"])).wait(timeout=30)
        if params.get("_delay_ms"):
            time.sleep(int(params["_delay_ms"]) / 1000)
        text = " ".join(words)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        if fail == "request":
            runtime_body = {"error": TOO_LONG, "type": "invalid_request_error", "http_status": 400,
                            "activation_status": 1}
            status, result = classify(200, runtime_body)
            if inv.stream:
                self.store.append_tokens(inv.activation_id, {"done": True, "finish_reason": "error", **result})
        elif fail == "application":
            status, result = ActivationStatus.APPLICATION_ERROR, {"error": "the prompt was refused"}
        elif fail == "developer":
            status, result = ActivationStatus.DEVELOPER_ERROR, {"error": "The action did not produce a valid response."}
        elif fail == "internal":
            status, result = ActivationStatus.INTERNAL_ERROR, {"error": "whisk internal error"}
        else:
            status = ActivationStatus.SUCCESS
            result = {"text": text, "finish_reason": "length", "token_ids": list(range(len(words))),
                      "usage": usage, "timings": {"ttft_s": 0.001, "total_s": 0.002}, "model": "test",
                      "params": params}
            if inv.stream:
                self.store.append_tokens(inv.activation_id, {"done": True, "finish_reason": "length", "usage": usage})
        end = now_ms()
        record = ActivationRecord(
            namespace=inv.namespace, name=inv.action, version=inv.action_version, subject=inv.subject,
            activationId=inv.activation_id, start=started, end=end, duration=end - started,
            logs=[f"2024-01-01T00:00:00.000Z stdout: ran {inv.action}"],
            response=ActivationResponse.of(status, result, size=len(str(result))),
            annotations=[KeyValue(key="path", value=f"{inv.namespace}/{inv.action}"),
                         KeyValue(key="kind", value="llm"), KeyValue(key="timeout", value=False),
                         KeyValue(key="waitTime", value=started - inv.enqueued_ms)],
            coldStart=False, loadTier="warm", loadTime=0.0, node="test-node", timeToFirstToken=0.001,
        )
        deadline = time.monotonic() + 120
        while True:  # a test may have stopped or killed Redis meanwhile: store it once it is back
            try:
                self.store.complete(record)
                return
            except STORE_AWAY:
                if time.monotonic() > deadline or self._stop.is_set():
                    return
                time.sleep(0.1)
