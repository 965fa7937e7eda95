"""The pure parts of the client and CLI: SSE parsing, error mapping, bodies, sizes, properties."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from cli._client import collect_params, parse_value
from cli.activation import strip_log_line
from cli.cluster import warm_by_action
from cli.up import parse_size, port_free
from faas_llm.client import Invoked, action_body, error_for, parse_sse
from faas_llm.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    InternalError,
    NotFoundError,
    RequestError,
    ThrottledError,
)
from faas_llm.properties import ClientConfig, read_properties, write_properties
from faas_llm.settings import Settings
from faas_llm.types import ContainerInfo, ContainerState, NodeReport


def test_parse_sse_events_until_done() -> None:
    lines = [": comment", "data: {\"a\": 1}", "", "event: x", "data: {\"b\":", "data: 2}", "", "data: [DONE]", "",
             "data: {\"after\": true}", ""]
    assert list(parse_sse(iter(lines))) == [{"a": 1}, {"b": 2}]


def test_parse_sse_error_event_raises_with_message() -> None:
    lines = ["data: {\"x\": 1}", "", "data: {\"error\": {\"message\": \"no such model\", \"code\": 404}}", ""]
    events = parse_sse(iter(lines))
    assert next(events) == {"x": 1}
    with pytest.raises(NotFoundError, match="no such model"):
        next(events)


def test_error_for_maps_status_and_keeps_server_message() -> None:
    err = error_for(404, {"error": "The requested resource does not exist.", "code": "tx1"}, "fallback")
    assert isinstance(err, NotFoundError)
    assert err.message == "The requested resource does not exist."
    assert err.details == {"status": 404, "code": "tx1"}
    assert isinstance(error_for(401, None, "401 UNAUTHORIZED"), AuthError)
    assert isinstance(error_for(409, {"error": "resource already exists"}, "x"), ConflictError)
    assert isinstance(error_for(429, {"error": {"message": "slow down"}}, "x"), ThrottledError)
    assert error_for(429, {"error": {"message": "slow down"}}, "x").message == "slow down"
    unknown = error_for(418, "teapot", "418 I'm a teapot")
    assert isinstance(unknown, InternalError) and unknown.message == "418 I'm a teapot"


def test_action_body_is_openwhisk_shaped() -> None:
    body = action_body("org/m", {"max_tokens": 8}, {"timeout": 1000}, {"min_instances": 1}, {"web": True})
    assert body == {
        "exec": {"kind": "llm", "model": "org/m"},
        "parameters": [{"key": "max_tokens", "value": 8}],
        "limits": {"timeout": 1000},
        "scaling": {"min_instances": 1},
        "annotations": [{"key": "web", "value": True}],
    }
    assert action_body("m") == {"exec": {"kind": "llm", "model": "m"}}


def test_invoked_success() -> None:
    assert Invoked("a" * 32).success is None
    assert Invoked("a" * 32, result={"text": "x"}, done=True).success is True
    assert Invoked("a" * 32, result={"error": "bad"}, done=True).success is False


@pytest.mark.parametrize(("text", "expected"), [
    ("1048576", 1 << 20), ("512MiB", 512 << 20), ("2GiB", 2 << 30), ("1.5GB", 1_500_000_000), ("10k", 10_000),
    ("3 gib", 3 << 30),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1", "2 parsecs", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_size(text)


def test_params_json_values_file_then_flags(tmp_path: Path) -> None:
    assert parse_value("8") == 8 and parse_value("hello") == "hello" and parse_value('{"a": [1]}') == {"a": [1]}
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"prompt": "from file", "max_tokens": 4}))
    assert collect_params([("max_tokens", "16"), ("stop", "[\"\\n\"]")], f) == {
        "prompt": "from file", "max_tokens": 16, "stop": ["\n"]}
    f.write_text("[1, 2]")
    with pytest.raises(RequestError, match="JSON object"):
        collect_params([], f)
    f.write_text("{not json")
    with pytest.raises(RequestError, match="cannot read parameters"):
        collect_params([], f)


def test_strip_log_line() -> None:
    assert strip_log_line("2024-01-01T00:00:00.000Z stdout: hello world") == "hello world"
    assert strip_log_line("plain line") == "plain line"


def test_warm_by_action_counts_states_per_action() -> None:
    node = NodeReport(node="n1", containers=[
        ContainerInfo(id="c1", state=ContainerState.BUSY, namespace="guest", action="a"),
        ContainerInfo(id="c2", state=ContainerState.IDLE, namespace="guest", action="a"),
        ContainerInfo(id="c3", state=ContainerState.PREWARMED),
    ])
    other = NodeReport(node="n2", containers=[ContainerInfo(id="c4", state=ContainerState.IDLE, namespace="guest",
                                                            action="a")])
    counts = warm_by_action([node, other])
    assert counts["/guest/a"] == {"busy": 1, "idle": 2}
    assert counts["(prewarmed)"] == {"prewarmed": 1}


def test_properties_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "props"
    assert read_properties(path) == {}
    path.parent.mkdir()
    path.write_text("# wsk file\nAPIHOST=https://example:443\nFOO=bar\n")
    write_properties(path, {"AUTH": "u:k", "APIHOST": None})
    assert read_properties(path) == {"FOO": "bar", "AUTH": "u:k"}
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("garbage line\n")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        read_properties(path)


def test_client_config_precedence(tmp_path: Path) -> None:
    path = tmp_path / "props"
    base = Settings(properties_file=path, gateway_port=4000, data_dir=tmp_path)
    assert ClientConfig.resolve(base).apihost == "http://127.0.0.1:4000"  # nothing set: the local gateway
    write_properties(path, {"APIHOST": "gw.example:8443/", "AUTH": "a:b", "REDIS_URL": "redis://r:1/0"})
    file_config = ClientConfig.resolve(base)
    assert (file_config.apihost, file_config.auth, file_config.redis_url) == ("https://gw.example:8443", "a:b",
                                                                              "redis://r:1/0")
    env = Settings.from_env({"FAAS_LLM_APIHOST": "http://x:1", "FAAS_LLM_AUTH": "c:d",
                             "FAAS_LLM_REDIS_URL": "redis://e:2/0",
                             "FAAS_LLM_PROPERTIES_FILE": str(path)})
    env_config = ClientConfig.resolve(env)
    assert (env_config.apihost, env_config.auth, env_config.redis_url) == ("http://x:1", "c:d", "redis://e:2/0")


def test_port_free_detects_a_listener() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_free("127.0.0.1", port)
    assert port_free("127.0.0.1", port)


def test_compare_rows_put_activations_side_by_side() -> None:
    from cli.activation import compare_rows
    from faas_llm.errors import ActivationStatus
    from faas_llm.types import ActivationRecord, ActivationResponse, KeyValue, LoadTier

    ok = ActivationResponse.of(ActivationStatus.SUCCESS, {"text": "x"})
    cold = ActivationRecord(namespace="guest", name="a", subject="guest", activationId="a" * 32, start=0,
                            duration=900, response=ok, coldStart=True, loadTier=LoadTier.SSD, loadTime=0.5,
                            timeToFirstToken=0.61, annotations=[KeyValue(key="initTime", value=600)])
    warm = cold.model_copy(update={"activationId": "b" * 32, "coldStart": False, "loadTier": LoadTier.WARM,
                                   "loadTime": None, "duration": 40, "timeToFirstToken": 0.02, "annotations": []})
    failed = warm.model_copy(update={"activationId": "c" * 32, "loadTier": None, "timeToFirstToken": None})
    rows = {row[0]: row[1:] for row in compare_rows([cold, warm, failed])}
    assert rows["start kind"] == ["cold", "warm", "-"]  # an init failure or a timeout never ran warm
    assert rows["load tier"] == ["ssd", "warm", ""]
    assert rows["init ms"] == ["600", "", ""]
    assert rows["duration ms"] == ["900", "40", "40"]
    assert rows["load s"] == ["0.500", "", ""]
    assert rows["ttft s"] == ["0.610", "0.020", ""]
