"""The invoker's parts without runtimes: records, log collection, protocol outcomes, Docker spec."""

from __future__ import annotations

import threading
import time

import pytest

from faas_llm.errors import ActivationStatus
from faas_llm.runtime_protocol import classify
from faas_llm.settings import Settings
from faas_llm.types import Invocation, Limits, LoadTier, new_activation_id
from invoker.docker_factory import INSIDE_PORT, container_spec
from invoker.logs import SENTINEL, LogCollector
from invoker.records import RunFacts, build_record, failure_record, runtime_ttft


def _inv(**kw: object) -> Invocation:
    aid = new_activation_id()
    base: dict[str, object] = {"activation_id": aid, "namespace": "guest", "action": "chat", "subject": "guest",
                               "transaction_id": aid, "deadline_ms": 10_000, "enqueued_ms": 1_000}
    base.update(kw)
    return Invocation(**base)  # type: ignore[arg-type]


def _annotations(record: object) -> dict[str, object]:
    return {a.key: a.value for a in record.annotations}  # type: ignore[attr-defined]


def test_cold_record_has_init_time_and_load_fields() -> None:
    inv = _inv()
    facts = RunFacts(start_ms=1_500, end_ms=2_000, status=ActivationStatus.SUCCESS, result={"text": "hi"},
                     node="n1", logs=["l"], cold_start=True, load_tier=LoadTier.DRAM, load_s=0.25, init_ms=300,
                     ttft_s=0.7)
    rec = build_record(inv, facts, Limits(timeout=5000))
    ann = _annotations(rec)
    assert ann["waitTime"] == 500 and ann["initTime"] == 300 and ann["timeout"] is False
    assert ann["path"] == "guest/chat" and ann["kind"] == "llm" and ann["limits"]["timeout"] == 5000  # type: ignore[index]
    assert rec.duration == 500 and rec.coldStart and rec.loadTier is LoadTier.DRAM and rec.loadTime == 0.25
    assert rec.node == "n1" and rec.nodes == ["n1"] and rec.timeToFirstToken == 0.7 and rec.logs == ["l"]
    assert rec.response.success and rec.response.status == "success" and rec.response.size == len('{"text":"hi"}')


def test_warm_record_has_no_init_time_and_failures_are_clear() -> None:
    facts = RunFacts(start_ms=1_000, end_ms=1_100, status=ActivationStatus.SUCCESS, result={}, node="n1",
                     load_tier=LoadTier.WARM, load_s=0.0)
    assert "initTime" not in _annotations(build_record(_inv(), facts))
    rec = failure_record(_inv(), ActivationStatus.DEVELOPER_ERROR, "boom", "n2", 5_000, timed_out=True)
    assert rec.response.status == "action developer error" and rec.response.statusCode == 2
    assert rec.response.result == {"error": "boom"} and _annotations(rec)["timeout"] is True
    assert rec.node == "n2" and not rec.response.success


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, {"text": "x"}, ActivationStatus.SUCCESS),
    (200, [1, 2], ActivationStatus.SUCCESS),
    (200, {"error": "bad prompt", "activation_status": 1}, ActivationStatus.APPLICATION_ERROR),
    (200, {"error": "x"}, ActivationStatus.APPLICATION_ERROR),
    (502, {"error": "crashed", "activation_status": 2}, ActivationStatus.DEVELOPER_ERROR),
    (500, {"error": "bug", "activation_status": 3}, ActivationStatus.INTERNAL_ERROR),
    (500, {"no": "error key"}, ActivationStatus.DEVELOPER_ERROR),
    (200, None, ActivationStatus.DEVELOPER_ERROR),
    (200, "text", ActivationStatus.DEVELOPER_ERROR),
])
def test_classify_follows_openwhisk(status: int, body: object, expected: ActivationStatus) -> None:
    got, result = classify(status, body)
    assert got is expected
    if expected is not ActivationStatus.SUCCESS:
        assert "error" in result


def test_classify_keeps_the_client_status_of_a_refused_input() -> None:
    """Issue 12: a runtime's 4xx application error (a prompt too long) keeps its status in the
    result; developer errors and plain application errors do not carry one."""
    too_long = {"error": "the prompt has 1200 tokens", "type": "invalid_request_error", "http_status": 400,
                "activation_status": 1}
    assert classify(200, too_long) == (ActivationStatus.APPLICATION_ERROR,
                                       {"error": "the prompt has 1200 tokens", "http_status": 400})
    assert classify(200, {"error": "big", "http_status": 502, "activation_status": 1})[1] == {"error": "big"}
    assert classify(502, {"error": "crash", "http_status": 400, "activation_status": 2})[1] == {"error": "crash"}


def test_runtime_ttft_reads_the_runtime_timings() -> None:
    assert runtime_ttft({"timings": {"ttft_s": 0.5}}) == 0.5
    assert runtime_ttft({"timings": {"ttft_s": None}}) is None
    assert runtime_ttft([1]) is None


def test_log_collector_reads_each_stream_up_to_its_sentinel() -> None:
    logs = LogCollector()
    logs.feed("stdout", "boot noise")
    logs.clear()
    logs.feed("stdout", "one", ts=1.0)
    logs.feed("stderr", "warn", ts=2.0)
    logs.feed("stdout", SENTINEL, ts=3.0)
    logs.feed("stderr", SENTINEL, ts=3.0)
    logs.feed("stdout", "next activation", ts=4.0)
    lines = logs.collect(timeout_s=0.5)
    assert [line.split(" ", 1)[1] for line in lines] == ["stdout: one", "stderr: warn"]
    assert lines[0].startswith("1970-01-01T00:00:01")
    # the next activation's line is still there; without a sentinel collection stops at the timeout
    started = time.monotonic()
    assert [line.split(" ", 1)[1] for line in logs.collect(timeout_s=0.2)] == ["stdout: next activation"]
    assert time.monotonic() - started >= 0.2


def test_log_collector_waits_for_late_sentinels_and_stops_at_eof() -> None:
    logs = LogCollector()

    def late() -> None:
        time.sleep(0.1)
        logs.feed("stdout", "late line")
        logs.feed("stdout", SENTINEL)
        logs.eof("stderr")

    threading.Thread(target=late).start()
    assert [line.split(" ", 1)[1] for line in logs.collect(timeout_s=5)] == ["stdout: late line"]


def test_log_collector_truncates_at_the_limit() -> None:
    logs = LogCollector(limit_bytes=200)
    for i in range(50):
        logs.feed("stdout", f"line {i}")
    logs.feed("stdout", SENTINEL)
    logs.eof("stderr")
    lines = logs.collect()
    assert len(lines) < 50 and "truncated" in lines[-1]


def test_docker_container_spec(tmp_path: object) -> None:
    settings = Settings(node_id="n7", data_dir=tmp_path, runtime_image="img:1", runtime_host="10.0.0.5")  # type: ignore[arg-type]
    spec = container_spec(settings, "n7-abc", 41234, memory_mb=1024)
    assert spec["image"] == "img:1" and spec["name"] == "faas-llm-n7-abc" and spec["detach"] is True
    assert spec["ports"] == {f"{INSIDE_PORT}/tcp": ("10.0.0.5", 41234)}
    env = spec["environment"]
    assert env["FAAS_LLM_RUNTIME_HOST"] == "0.0.0.0" and env["FAAS_LLM_RUNTIME_PORT"] == str(INSIDE_PORT)
    assert env["PORT"] == str(INSIDE_PORT) and env["FAAS_LLM_NODE_ID"] == "n7"
    assert spec["volumes"] == {str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}}
    assert spec["labels"]["faas-llm.container"] == "n7-abc" and spec["mem_limit"] == "1024m"
    # Settings in the container parse back to the same values
    assert Settings.from_env(env).node_id == "n7"


@pytest.mark.docker
def test_docker_factory_starts_a_runtime(tmp_path: object) -> None:
    from invoker.docker_factory import DockerFactory

    settings = Settings(data_dir=tmp_path, runtime_start_timeout_s=120)  # type: ignore[arg-type]
    factory = DockerFactory(settings)
    handle = factory.start("t1")
    try:
        assert factory.alive(handle)
        import requests

        assert requests.get(f"{handle.url}/health", timeout=5).status_code == 200
    finally:
        factory.remove(handle, graceful=False)
        factory.close()
    assert not factory.alive(handle)


def test_log_reader_splits_what_arrives_into_lines_and_drains_lazily_when_nobody_collects() -> None:
    import os

    for collecting in (True, False):
        logs = LogCollector()
        logs.collecting = collecting
        logs.eof("stderr")  # only stdout here
        read_fd, write_fd = os.pipe()
        thread = logs.follow("stdout", os.fdopen(read_fd, "rb"))
        os.write(write_fd, b"one\r\ntw")
        time.sleep(0.05)
        os.write(write_fd, "o \u00e9\n".encode()[:3])
        os.write(write_fd, "o \u00e9\n".encode()[3:] + f"{SENTINEL}\nlast, no newline".encode())
        assert [line.split(" ", 1)[1] for line in logs.collect(timeout_s=5)] == ["stdout: one", "stdout: two \u00e9"]
        os.close(write_fd)
        thread.join(5)
        assert not thread.is_alive()
        assert [line.split(" ", 1)[1] for line in logs.collect(timeout_s=5)] == ["stdout: last, no newline"]
