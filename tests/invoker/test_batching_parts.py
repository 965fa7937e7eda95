"""The invoker's side of continuous batching: the record's batch annotation, GPU slots of a node."""

from __future__ import annotations

import pytest

from faas_llm.errors import ActivationStatus, InternalError
from faas_llm.settings import Settings
from faas_llm.types import Invocation, new_activation_id
from invoker.factory import GpuSlots, ProcessFactory, gpu_ids
from invoker.records import RunFacts, build_record


def _record(result: object) -> dict[str, object]:
    aid = new_activation_id()
    inv = Invocation(activation_id=aid, namespace="guest", action="chat", subject="guest", transaction_id=aid,
                     deadline_ms=10_000, enqueued_ms=1_000)
    facts = RunFacts(start_ms=1_000, end_ms=1_100, status=ActivationStatus.SUCCESS, result=result, node="n1")
    return {a.key: a.value for a in build_record(inv, facts).annotations}


def test_the_record_shows_the_batch_a_run_shared() -> None:
    ann = _record({"text": "x", "timings": {"batch_size": 5.5, "batch_size_max": 8, "ttft_s": 0.1}})
    assert ann["batchSize"] == {"mean": 5.5, "max": 8}
    assert "batchSize" not in _record({"text": "x", "timings": {"ttft_s": 0.1}})
    assert "batchSize" not in _record({"answer": 42})  # a handler's own result


def test_gpu_slots_give_each_runtime_its_own_gpu() -> None:
    assert gpu_ids("") == [] and gpu_ids("0,3") == ["0", "3"]
    slots = GpuSlots(["0", "1"])
    first, second = slots.take(), slots.take()
    assert {first, second} == {"0", "1"}
    with pytest.raises(InternalError, match="every GPU"):
        slots.take()
    slots.give(first)
    assert slots.take() == first


def test_a_gpu_node_starts_runtimes_on_their_own_device(tmp_path: object) -> None:
    factory = ProcessFactory(Settings(node_gpus="2,5", data_dir=tmp_path))  # type: ignore[arg-type]
    env_a, gpu_a = factory._environ(9001)
    env_b, gpu_b = factory._environ(9002)
    assert (env_a["CUDA_VISIBLE_DEVICES"], env_b["CUDA_VISIBLE_DEVICES"]) == ("2", "5") == (gpu_a, gpu_b)
    assert env_a["FAAS_LLM_RUNTIME_DEVICE"] == "cuda" and env_a["FAAS_LLM_RUNTIME_PORT"] == "9001"
    cpu_env, none = ProcessFactory(Settings(data_dir=tmp_path))._environ(9003)  # type: ignore[arg-type]
    assert none is None and "CUDA_VISIBLE_DEVICES" not in cpu_env
