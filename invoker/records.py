"""Activation records (pure): an invocation plus how its run went -> the OpenWhisk record.

Annotations follow OpenWhisk (``path``, ``kind``, ``limits``, ``timeout``, ``waitTime``, and
``initTime`` on a cold start only); faas-llm's fields say where the model came from
(``coldStart``, ``loadTier``, ``loadTime``), which node ran it, ``batchSize`` (the runs it shared its
runtime's forward steps with: mean and most) and ``timeToFirstToken``:
seconds from the enqueue to the first token (streams: the first streamed token; otherwise the
queue wait plus the runtime's own time to first token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from faas_llm.errors import ActivationStatus
from faas_llm.types import ActivationRecord, ActivationResponse, Invocation, KeyValue, Limits, LoadTier


@dataclass
class RunFacts:
    start_ms: int
    end_ms: int
    status: ActivationStatus
    result: Any
    node: str
    logs: list[str] = field(default_factory=list)
    cold_start: bool = False
    load_tier: LoadTier | None = None
    load_s: float | None = None
    init_ms: int | None = None
    ttft_s: float | None = None
    timed_out: bool = False


def result_size(result: Any) -> int:
    return len(json.dumps(result, separators=(",", ":")).encode()) if result is not None else 0


def runtime_ttft(result: Any) -> float | None:
    """The runtime's own time to first token (``result.timings.ttft_s``), if it reported one."""
    if isinstance(result, dict):
        timings = result.get("timings")
        if isinstance(timings, dict) and isinstance(timings.get("ttft_s"), int | float):
            return float(timings["ttft_s"])
    return None


def runtime_batch(result: Any) -> dict[str, Any] | None:
    """The batch the run shared in its runtime (``timings.batch_size`` mean and ``batch_size_max``), if reported."""
    timings = result.get("timings") if isinstance(result, dict) else None
    if isinstance(timings, dict) and isinstance(timings.get("batch_size"), int | float):
        return {"mean": timings["batch_size"], "max": timings.get("batch_size_max")}
    return None


def build_record(inv: Invocation, facts: RunFacts, limits: Limits | None = None, kind: str = "llm") -> ActivationRecord:
    limits = limits or Limits()
    annotations = [
        KeyValue(key="path", value=f"{inv.namespace}/{inv.action}"),
        KeyValue(key="kind", value=kind),
        KeyValue(key="limits", value=limits.model_dump()),
        KeyValue(key="timeout", value=facts.timed_out),
        KeyValue(key="waitTime", value=max(0, facts.start_ms - inv.enqueued_ms)),
    ]
    if facts.cold_start and facts.init_ms is not None:
        annotations.append(KeyValue(key="initTime", value=facts.init_ms))
    batch = runtime_batch(facts.result)
    if batch is not None:  # continuous batching: how many runs this one shared its runtime's steps with
        annotations.append(KeyValue(key="batchSize", value=batch))
    return ActivationRecord(
        namespace=inv.namespace,
        name=inv.action,
        version=inv.action_version,
        subject=inv.subject,
        activationId=inv.activation_id,
        start=facts.start_ms,
        end=facts.end_ms,
        duration=max(0, facts.end_ms - facts.start_ms),
        logs=facts.logs,
        response=ActivationResponse.of(facts.status, facts.result, result_size(facts.result)),
        annotations=annotations,
        coldStart=facts.cold_start,
        loadTier=facts.load_tier,
        loadTime=facts.load_s,
        node=facts.node,
        nodes=[facts.node],
        timeToFirstToken=facts.ttft_s,
    )


def failure_record(inv: Invocation, status: ActivationStatus, message: str, node: str, now_ms: int,
                   *, timed_out: bool = False, limits: Limits | None = None) -> ActivationRecord:
    """A record for an activation that did not (or could not) run to an answer."""
    facts = RunFacts(start_ms=now_ms, end_ms=now_ms, status=status, result={"error": message}, node=node,
                     timed_out=timed_out)
    return build_record(inv, facts, limits)


def timeout_message(limits: Limits) -> str:
    return f"The action exceeded its time limits of {limits.timeout} milliseconds."
