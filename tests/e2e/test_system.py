"""The whole system, end to end, as a user runs it: a real ``faas-llm up`` (embedded Redis, gateway
under gunicorn, invoker with process containers, cache agent, Celery worker), the tiny demo model
pushed with ``faas-llm model push``, and actions invoked through the CLI, the OpenWhisk API and the
official OpenAI client.

The tests share one cluster and run in order: the first cold start must find the model only in the
registry, and later ones find it in the cache agent's DRAM.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.properties import read_properties
from faas_llm.types import ActivationRecord, LoadTier
from tests.cli.conftest import Cli, UpCluster, cli_env, start_up, stop_up
from tests.harness import wait_for

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
PROMPT = "The serverless platform"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[UpCluster]:
    home = tmp_path_factory.mktemp("e2e-home")
    # A small DRAM pool: the tiny model needs ~1 MB, and pre-faulting 4 GiB would only cost time.
    cli = Cli(cli_env(home, FAAS_LLM_DRAM_CAPACITY_BYTES=str(64 * 1024 * 1024)), home)
    up = start_up(cli)
    try:
        pushed = cli.ok("model", "push", str(tiny_model_dir), "--name", MODEL, timeout=180).out
        assert re.search(rf"pushed {MODEL} version 1 ", pushed), pushed
        yield up
    finally:
        stop_up(up)


@pytest.fixture(scope="module")
def store(cluster: UpCluster) -> Iterator[ActivationStore]:
    client = redis.Redis.from_url(cluster.state["redis_url"], decode_responses=True)
    try:
        yield ActivationStore(client, Keys("faas"))
    finally:
        client.close()


def invoke_blocking(cli: Cli, action: str, **params: Any) -> ActivationRecord:
    args = [arg for key, value in {"prompt": PROMPT, **params}.items() for arg in ("-p", key, json.dumps(value))]
    out = cli.ok("action", "invoke", action, *args, "--blocking", timeout=180).out
    return ActivationRecord.model_validate_json(out[out.index("{"):])


def annotation(record: ActivationRecord, key: str) -> Any:
    return next((a.value for a in record.annotations if a.key == key), None)


def containers_of(cli: Cli, action: str) -> list[str]:
    status = cli.ok("cluster", "status", "--json").json()
    return [c["id"] for node in status["nodes"] for c in node["containers"] if c.get("action") == action]


def assert_timings(record: ActivationRecord) -> None:
    assert record.response.success, record.response
    assert record.node == "node0"
    assert record.timeToFirstToken is not None and record.timeToFirstToken > 0
    assert isinstance(annotation(record, "waitTime"), int)
    assert record.response.result is not None and record.response.result["usage"]["completion_tokens"] > 0


def test_cold_start_from_the_registry_then_warm_on_the_same_container(cluster: UpCluster) -> None:
    cli = cluster.cli
    cli.ok("action", "create", "hello", "--model", MODEL, "-p", "max_tokens", "12")

    cold = invoke_blocking(cli, "hello")
    assert_timings(cold)
    assert cold.coldStart is True
    assert cold.loadTier == LoadTier.REGISTRY  # a fresh cluster: only the registry holds the model
    assert cold.loadTime is not None and cold.loadTime > 0
    assert isinstance(annotation(cold, "initTime"), int)
    [container] = containers_of(cli, "hello")

    warm = invoke_blocking(cli, "hello")
    assert_timings(warm)
    assert warm.coldStart is False and warm.loadTier == LoadTier.WARM and not warm.loadTime
    assert annotation(warm, "initTime") is None
    assert containers_of(cli, "hello") == [container]

    compared = cli.ok("activation", "compare", cold.activationId, warm.activationId).out
    assert re.search(r"start kind\s+cold\s+warm", compared), compared
    assert re.search(r"load tier\s+registry\s+warm", compared), compared


def test_stream_first_chunk_arrives_before_the_record_is_stored(cluster: UpCluster,
                                                                store: ActivationStore) -> None:
    key = read_properties(cluster.cli.home / "props")["AUTH"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = openai.OpenAI(base_url=f"{cluster.apihost}/v1", api_key=key, max_retries=0, timeout=120)
    stored_at_first_chunk: bool | None = None
    text = ""
    try:
        with client.chat.completions.with_streaming_response.create(
            model="hello", messages=[{"role": "user", "content": PROMPT}], max_tokens=400, stream=True,
        ) as response:
            activation_id = response.headers["x-openwhisk-activation-id"]
            for chunk in response.parse():
                content = chunk.choices[0].delta.content if chunk.choices else None
                if content and stored_at_first_chunk is None:
                    stored_at_first_chunk = store.get(activation_id) is not None
                text += content or ""
    finally:
        client.close()
    assert stored_at_first_chunk is False, "the first token came only after the activation had finished"
    record = wait_for("the streamed activation's record", lambda: store.get(activation_id))
    assert record.response.success and record.response.result is not None
    assert record.response.result["text"] == text


def test_second_cold_start_maps_the_dram_copy(cluster: UpCluster) -> None:
    cli = cluster.cli
    cli.ok("action", "create", "brief", "--model", MODEL, "-p", "max_tokens", "4", "--keep-alive", "1")
    first = invoke_blocking(cli, "brief")
    assert first.coldStart is True
    wait_for("the idle container to be removed", lambda: not containers_of(cli, "brief"), timeout_s=60)
    again = invoke_blocking(cli, "brief")
    assert_timings(again)
    assert again.coldStart is True and again.loadTier == LoadTier.DRAM
    assert again.loadTime is not None and again.loadTime > 0


def test_non_blocking_invoke_then_activation_get(cluster: UpCluster) -> None:
    cli = cluster.cli
    out = cli.ok("action", "invoke", "hello", "-p", "prompt", PROMPT).out
    match = re.search(r"with id ([0-9a-f]{32})", out)
    assert match, out
    activation_id = match.group(1)

    def fetched() -> dict[str, Any] | None:
        got = cli("activation", "get", activation_id, "--json")
        return json.loads(got.out) if got.code == 0 else None

    record = ActivationRecord.model_validate(wait_for("the activation record", fetched))
    assert record.activationId == activation_id and record.name == "hello"
    assert_timings(record)
    result = cli.ok("activation", "result", activation_id).out
    assert record.response.result is not None and json.loads(result)["text"] == record.response.result["text"]


def test_drain_empties_the_node_and_undrain_takes_work_again(cluster: UpCluster) -> None:
    cli = cluster.cli
    drained = cli.ok("node", "drain", "node0", "--wait", "60", "--json", timeout=120).json()
    assert drained["state"] == "done" and drained["empty"] is True, drained
    [node] = cli.ok("cluster", "status", "--json").json()["nodes"]
    assert node["draining"] and not node["containers"]  # prewarmed runtimes go too
    cli.ok("node", "undrain", "node0")
    again = invoke_blocking(cli, "hello")
    assert_timings(again)
    assert again.coldStart is True and again.loadTier == LoadTier.DRAM


def test_min_instances_start_without_invocation_and_go_when_lowered_or_deleted(cluster: UpCluster) -> None:
    cli = cluster.cli

    def warm_idle() -> list[str]:
        status = cli.ok("cluster", "status", "--json").json()
        return [c["id"] for node in status["nodes"] for c in node["containers"]
                if c.get("action") == "ready" and c["state"] == "idle"]

    cli.ok("action", "create", "ready", "--model", MODEL, "-p", "max_tokens", "4", "--min-instances", "1")
    [container] = wait_for("the min_instances container, with no invocation", warm_idle, timeout_s=30)
    first = invoke_blocking(cli, "ready")  # the first invocation finds it warm
    assert_timings(first)
    assert first.coldStart is False and first.loadTier == LoadTier.WARM and not first.loadTime
    assert annotation(first, "initTime") is None
    assert containers_of(cli, "ready") == [container]
    # min_instances back to 0 with a short keep-alive: it scales to zero
    cli.ok("action", "update", "ready", "--min-instances", "0", "--keep-alive", "1")
    wait_for("scale to zero once min_instances is 0", lambda: not containers_of(cli, "ready"), timeout_s=30)
    # raised again, then the action deleted: its instance goes with it (min_instances and keep-alive are moot)
    cli.ok("action", "update", "ready", "--min-instances", "1", "--keep-alive", "600")
    wait_for("the min_instances container again", warm_idle, timeout_s=30)
    cli.ok("action", "delete", "ready")
    wait_for("the deleted action's container to go", lambda: not containers_of(cli, "ready"), timeout_s=30)


def test_prompt_longer_than_the_context_is_a_400_not_a_502(cluster: UpCluster) -> None:
    """Issue 12, through the real runtime: a prompt over the tiny model's 512-token context is the
    client's error on the OpenAI face (400 invalid_request_error, streamed or not); the OpenWhisk
    record is an application error that says why."""
    import requests

    key = read_properties(cluster.cli.home / "props")["AUTH"]
    long_prompt = "x " * 600
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = openai.OpenAI(base_url=f"{cluster.apihost}/v1", api_key=key, max_retries=0, timeout=180)
    try:
        with pytest.raises(openai.BadRequestError) as completion:
            client.completions.create(model="hello", prompt=long_prompt, max_tokens=1)
        with pytest.raises(openai.BadRequestError) as chat:
            client.chat.completions.create(model="hello", messages=[{"role": "user", "content": long_prompt}],
                                           max_tokens=1)
        for failed in (completion.value, chat.value):
            assert failed.status_code == 400 and isinstance(failed.body, dict), failed
            assert failed.body["type"] == "invalid_request_error"
            assert "the model's context is 512 tokens" in failed.message
        with pytest.raises(openai.APIError) as streamed:
            list(client.completions.create(model="hello", prompt=long_prompt, max_tokens=1, stream=True))
        assert "the model's context is 512 tokens" in streamed.value.message
    finally:
        client.close()
    uuid, secret = key.split(":", 1)
    reply = requests.post(f"{cluster.apihost}/api/v1/namespaces/_/actions/hello?blocking=true",
                          json={"prompt": long_prompt}, auth=(uuid, secret), timeout=180)
    assert reply.status_code == 502
    response = reply.json()["response"]
    assert response["status"] == "application error" and response["statusCode"] == 1
    assert "the prompt has" in response["result"]["error"]
    assert "the model's context is 512 tokens" in response["result"]["error"]
