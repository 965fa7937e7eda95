"""``faas-llm admin ...`` against the real Redis; keys it prints authenticate at the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import requests
from click.testing import CliRunner

from cli import cli, main
from faas_llm.auth import AuthStore, Credentials
from faas_llm.keys import Keys
from faas_llm.settings import Settings, get_settings


@pytest.fixture
def run(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    yield invoke
    get_settings.cache_clear()


def test_namespace_and_key_lifecycle(run, redis_client: redis.Redis, keys: Keys, gunicorn_gateway: str) -> None:
    first = run("admin", "namespace", "create", "team").strip()
    creds = Credentials.parse(first)
    store = AuthStore(redis_client, keys)
    assert store.verify(creds).namespace == "team"
    assert requests.get(f"{gunicorn_gateway}/api/v1/namespaces", auth=(creds.uuid, creds.secret)).json() == ["team"]
    second = Credentials.parse(run("admin", "key", "create", "team").strip())
    assert run("admin", "key", "list", "team").split() == sorted([creds.uuid, second.uuid])
    assert "team\tkeys=2\tactions=0" in run("admin", "namespace", "list")
    # the secret is never stored in clear
    assert creds.secret not in str(redis_client.hgetall(keys.auth(creds.uuid)))
    run("admin", "key", "delete", second.uuid)
    assert requests.get(f"{gunicorn_gateway}/api/v1/namespaces", auth=(second.uuid, second.secret)).status_code == 401
    assert "invocationsPerMinute=7" in run("admin", "limits", "set", "team", "--invocations-per-minute", "7")
    assert "concurrentInvocations=30" in run("admin", "limits", "get", "team")
    assert "deleted namespace team (1 keys, 0 actions)" in run("admin", "namespace", "delete", "team", "--yes")
    assert requests.get(f"{gunicorn_gateway}/api/v1/namespaces", auth=(creds.uuid, creds.secret)).status_code == 401
    assert run("admin", "namespace", "list") == ""


def test_admin_errors_are_clear(run, capsys: pytest.CaptureFixture[str]) -> None:
    run("admin", "namespace", "create", "dup", "--no-key")
    for args, message in ((["namespace", "create", "dup"], "already exists"),
                          (["key", "create", "nope"], "does not exist"),
                          (["namespace", "create", "_"], "reserved"),
                          (["namespace", "create", "a/b"], "not a valid name")):
        with pytest.raises(SystemExit) as exit_info:
            main(["admin", *args])
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err


def test_faas_llm_gateway_command_serves_until_sigterm(settings: Settings) -> None:
    import subprocess
    import sys

    from faas_llm.redis_server import free_port
    from faas_llm.settings import child_environ
    from tests.gateway.conftest import REPO, wait_healthy

    served = settings.model_copy(update={"gateway_port": free_port(), "gateway_workers": 1, "gateway_threads": 2})
    proc = subprocess.Popen([sys.executable, "-m", "cli", "gateway"], env=child_environ(served), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://{served.gateway_host}:{served.gateway_port}", proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
