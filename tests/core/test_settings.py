from pathlib import Path

import pytest

from faas_llm.errors import ConfigError
from faas_llm.settings import Settings


def test_defaults_are_valid() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.gateway_port == 3233
    assert s.max_payload_bytes == 1024 * 1024
    assert s.cache_socket_path == s.data_dir / "node0" / "agent.sock"
    assert s.registry == f"file://{s.data_dir / 'registry'}"


def test_reads_prefixed_variables_with_types() -> None:
    s = Settings.from_env({
        "FAAS_LLM_GATEWAY_PORT": "8000",
        "FAAS_LLM_LOADER_DIRECT_IO": "false",
        "FAAS_LLM_DATA_DIR": "/tmp/x",
        "FAAS_LLM_NODE_ID": "n-1",
        "UNRELATED": "ignored",
    })
    assert s.gateway_port == 8000
    assert s.loader_direct_io is False
    assert s.data_dir == Path("/tmp/x")
    assert s.ssd_path == Path("/tmp/x/n-1/ssd")


def test_knative_port_alias_and_priority() -> None:
    assert Settings.from_env({"PORT": "9000"}).runtime_port == 9000
    assert Settings.from_env({"PORT": "9000", "FAAS_LLM_RUNTIME_PORT": "9001"}).runtime_port == 9001


def test_overrides_win() -> None:
    s = Settings.from_env({"FAAS_LLM_GATEWAY_PORT": "8000"}, gateway_port=8001)
    assert s.gateway_port == 8001


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("FAAS_LLM_GATEWAY_PORT", "http", "FAAS_LLM_GATEWAY_PORT='http'"),
        ("FAAS_LLM_GATEWAY_PORT", "70000", "less than or equal to 65535"),
        ("FAAS_LLM_REDIS_URL", "http://x", "must start with redis://"),
        ("FAAS_LLM_REGISTRY_URL", "ftp://x", "must start with file:// or s3://"),
        ("FAAS_LLM_LOG_LEVEL", "LOUD", "FAAS_LLM_LOG_LEVEL"),
        ("FAAS_LLM_NODE_ID", "a/b", "FAAS_LLM_NODE_ID"),
        ("FAAS_LLM_LOADER_THREADS", "0", "greater than or equal to 1"),
        ("PORT", "-1", "PORT='-1'"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert needle in info.value.message


def test_unknown_prefixed_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="FAAS_LLM_GATEWAY_PROT"):
        Settings.from_env({"FAAS_LLM_GATEWAY_PROT": "1"})


def test_as_env_round_trips() -> None:
    s = Settings.from_env({}, gateway_port=4000, loader_direct_io=False, node_id="n2")
    assert Settings.from_env(s.as_env()) == s


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(Exception, match="frozen"):
        s.gateway_port = 1  # type: ignore[misc]
