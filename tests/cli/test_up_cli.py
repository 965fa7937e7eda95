"""The CLI as a subprocess against a real `faas-llm up` (embedded Redis, gateway under gunicorn and
whatever other services the package has): commands, --json, error paths, Ctrl-C without orphans.

The tests of one module share one cluster; the last test stops it with Ctrl-C and checks the aftermath.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cli.up import port_free
from faas_llm.properties import read_properties
from tests.cli.conftest import Cli, UpCluster, cli_env, start_up, stop_up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def up_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    home = tmp_path_factory.mktemp("up-home")
    cluster = start_up(Cli(cli_env(home), home))
    try:
        yield cluster
    finally:
        stop_up(cluster)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def test_up_writes_properties_and_prints_how_to_try_it(up_cluster: UpCluster) -> None:
    props = read_properties(up_cluster.cli.home / "props")
    assert props["APIHOST"] == up_cluster.apihost
    assert re.fullmatch(r"[0-9a-f-]{36}:[0-9a-f]{64}", props["AUTH"])
    assert props["REDIS_URL"].startswith("redis://127.0.0.1:")
    got = up_cluster.cli.ok("property", "get", "--json").json()
    assert isinstance(got, dict)
    assert got["apihost"] == up_cluster.apihost and got["auth"] == props["AUTH"]
    banner = up_cluster.log.read_text()
    assert f"faas-llm is up: {up_cluster.apihost}" in banner
    assert "faas-llm action invoke" in banner
    assert "gateway" in up_cluster.state["children"]


def test_action_lifecycle(up_cluster: UpCluster) -> None:
    cli = up_cluster.cli
    created = cli.ok("action", "create", "hello", "--model", "tiny-llama", "-p", "max_tokens", "8",
                     "--timeout", "30000", "--memory", "512", "--max-instances", "2", "--json").json()
    assert isinstance(created, dict)
    assert created["exec"] == {"kind": "llm", "model": "tiny-llama", "code": None, "main": "main", "binary": False}
    assert created["limits"]["timeout"] == 30000 and created["limits"]["memory"] == 512
    assert created["scaling"]["max_instances"] == 2
    assert created["parameters"] == [{"key": "max_tokens", "value": 8}]

    again = cli("action", "create", "hello", "--model", "tiny-llama")
    assert again.code == 1 and "already exists" in again.err
    _no_traceback(again.err)

    updated = cli.ok("action", "update", "hello", "--min-instances", "1", "--concurrency", "2", "--json").json()
    assert isinstance(updated, dict)
    assert updated["version"] == "0.0.2"
    assert updated["scaling"]["min_instances"] == 1 and updated["scaling"]["max_instances"] == 2  # merged
    assert updated["limits"]["concurrency"] == 2 and updated["limits"]["timeout"] == 30000  # kept
    assert updated["exec"]["model"] == "tiny-llama"

    listed = cli.ok("action", "list", "--json").json()
    assert [a["name"] for a in listed] == ["hello"]
    table = cli.ok("action", "list").out
    assert "/guest/hello" in table and "tiny-llama" in table
    assert "instances 1..2" in cli.ok("action", "get", "hello", "--summary").out

    cli.ok("action", "delete", "hello")
    gone = cli("action", "get", "hello")
    assert gone.code == 1 and "does not exist" in gone.err
    _no_traceback(gone.err)


def test_non_blocking_invoke_returns_an_activation_id(up_cluster: UpCluster) -> None:
    cli = up_cluster.cli
    cli.ok("action", "create", "queued", "--model", "tiny-llama")
    out = cli.ok("action", "invoke", "queued", "-p", "prompt", "hi").out
    assert re.search(r"ok: invoked /_/queued with id [0-9a-f]{32}", out), out


def test_error_paths_are_messages_with_exit_codes(up_cluster: UpCluster) -> None:
    cli = up_cluster.cli
    unknown = cli("action", "invoke", "no-such-action", "--blocking")
    assert unknown.code == 1 and "does not exist" in unknown.err
    bad_auth = cli("action", "list", "--auth", "00000000-0000-0000-0000-000000000000:" + "0" * 64)
    assert bad_auth.code == 1 and "authentication" in bad_auth.err.lower()
    usage = cli("action", "create", "x")  # no --model
    assert usage.code == 2 and "--model" in usage.err
    bad_value = cli("action", "create", "x", "--model", "m", "--timeout", "5")
    assert bad_value.code == 2
    bad_name = cli("action", "create", "bad/name", "--model", "m")
    assert bad_name.code == 1
    no_id = cli("activation", "get")
    assert no_id.code == 1 and "--last" in no_id.err
    for result in (unknown, bad_auth, usage, bad_value, bad_name, no_id):
        _no_traceback(result.err)


def test_cluster_status_reads_the_clusters_redis(up_cluster: UpCluster) -> None:
    status = up_cluster.cli.ok("cluster", "status", "--json").json()
    assert isinstance(status, dict)
    assert set(status) == {"nodes", "caches", "stale_nodes", "queues"}
    # the non-blocking invoke above left its invocation on the action's queue
    queues = {q["queue"]: q for q in status["queues"]}
    assert any(name.endswith(":guest:queued") for name in queues), queues
    up_cluster.cli.ok("cluster", "status")


def test_second_up_on_a_busy_port_fails_clearly(up_cluster: UpCluster, tmp_path: Path) -> None:
    # same data dir: refused because a cluster runs from it
    same = up_cluster.cli("up", "--port", str(up_cluster.port))
    assert same.code == 1 and "already running" in same.err
    # another data dir, same port: refused because the port is busy
    other = Cli(cli_env(tmp_path), tmp_path)
    busy = other("up", "--port", str(up_cluster.port))
    assert busy.code == 1 and f"port {up_cluster.port}" in busy.err and "in use" in busy.err
    for result in (same, busy):
        _no_traceback(result.err)


def test_ctrl_c_stops_everything(up_cluster: UpCluster) -> None:
    """Last in this module: Ctrl-C, then no process of the cluster is left and the port is free."""
    everyone = up_cluster.descendants()
    recorded = {int(pid) for pid, _ in up_cluster.state["children"].values()}
    assert recorded <= {p.pid for p in everyone}
    assert up_cluster.ctrl_c() == 0
    _, alive = psutil.wait_procs(everyone, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
    assert port_free("127.0.0.1", up_cluster.port)
    assert not (up_cluster.data_dir / "up.json").exists()
    assert "stopped." in up_cluster.log.read_text()
    down = up_cluster.cli("action", "list")
    assert down.code == 1 and "cannot reach the gateway" in down.err
    _no_traceback(down.err)


def test_detach_and_down(cli: Cli) -> None:
    from faas_llm.redis_server import free_port

    cli.env["FAAS_LLM_PREWARM_COUNT"] = "0"  # detach/down is the subject here; the cluster above prewarms
    port = free_port()
    started = cli.ok("up", "--port", str(port), "--detach", timeout=200)
    assert "faas-llm is up in the background" in started.out
    state = json.loads((cli.home / "data" / "up.json").read_text())
    up_proc = psutil.Process(state["pid"])
    everyone = [up_proc, *up_proc.children(recursive=True)]
    assert len(everyone) >= 3  # up, redis, gateway (+ its workers, and other services)
    assert cli.ok("action", "list", "--json").json() == []
    stopped = cli.ok("down")
    assert f"stopped faas-llm (pid {state['pid']})" in stopped.out
    _, alive = psutil.wait_procs(everyone, timeout=10)
    assert alive == []
    assert port_free("127.0.0.1", port)
    again = cli("down")
    assert again.code == 1 and "no `faas-llm up` is running" in again.err
