"""Security of the running cluster: namespaces are walls, keys are stored hashed, no secret leaks
into logs or records, and nothing listens beyond localhost by default."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests

from faas_llm.auth import AuthStore
from faas_llm.settings import Settings
from tests.reliability.harness import Ledger, RelCluster

pytestmark = pytest.mark.slow

PRINT_ENV = """
import os

def main(args):
    for k, v in sorted(os.environ.items()):
        print(f"{k}={v}")
    return {"n": len(os.environ)}
"""


@pytest.fixture(scope="module")
def intruder(rel: RelCluster) -> Iterator[requests.Session]:
    store = AuthStore(rel.r, rel.store.keys)
    if not store.namespace_exists("intruder"):
        store.create_namespace("intruder")
    creds = store.create_key("intruder")
    with requests.Session() as session:
        session.auth = (creds.uuid, creds.secret)
        yield session


def test_cross_namespace_reads_and_invokes_are_refused(rel: RelCluster, intruder: requests.Session) -> None:
    ledger = Ledger()
    aid = rel.invoke("canary", {"prompt": "mine", "max_tokens": 2}, ledger)
    ledger.settle(rel.store)
    before = rel.r.zcard(rel.store.keys.activations_index("guest"))
    base = f"{rel.apihost}/api/v1/namespaces"
    refused = [
        intruder.get(f"{base}/guest/actions/canary"),
        intruder.post(f"{base}/guest/actions/canary", json={"prompt": "x"}),
        intruder.put(f"{base}/guest/actions/canary", params={"overwrite": "true"},
                     json={"exec": {"kind": "llm", "model": "tiny"}}),
        intruder.delete(f"{base}/guest/actions/canary"),
        intruder.get(f"{base}/guest/actions"),
        intruder.get(f"{base}/guest/activations"),
        intruder.get(f"{base}/guest/activations/{aid}"),
        intruder.get(f"{base}/_/activations/{aid}"),
        intruder.get(f"{base}/_/activations/{aid}/result"),
        intruder.get(f"{base}/_/activations/{aid}/logs"),
        intruder.post(f"{base}/_/actions/canary", json={"prompt": "x"}),
        intruder.post(f"{rel.apihost}/v1/completions", json={"model": "canary", "prompt": "x"}),
        intruder.post(f"{rel.apihost}/v1/chat/completions",
                      json={"model": "canary", "messages": [{"role": "user", "content": "x"}]}),
    ]
    for reply in refused:
        assert reply.status_code in (401, 403, 404), (reply.request.method, reply.url, reply.status_code)
        assert "error" in reply.json()
        assert "mine" not in reply.text
    models = intruder.get(f"{rel.apihost}/v1/models").json()
    assert all(m["id"] != "canary" for m in models["data"])
    unauthenticated = requests.get(f"{base}/_/actions", timeout=10)
    assert unauthenticated.status_code == 401
    wrong = requests.get(f"{base}/_/actions", auth=(rel.key.split(":")[0], "0" * 64), timeout=10)
    assert wrong.status_code == 401
    assert rel.r.zcard(rel.store.keys.activations_index("guest")) == before  # nothing ran for the intruder
    assert rel.http.get(f"{base}/_/actions/canary").status_code == 200  # and nothing was changed


def redis_values(r: Any) -> Iterator[tuple[str, str]]:
    """Every key and every value in the cluster's Redis, as text."""
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            yield key, str(r.get(key))
        elif kind == "hash":
            yield key, repr(r.hgetall(key))
        elif kind == "list":
            yield key, repr(r.lrange(key, 0, -1))
        elif kind == "set":
            yield key, repr(r.smembers(key))
        elif kind == "zset":
            yield key, repr(r.zrange(key, 0, -1))
        elif kind == "stream":
            yield key, repr(r.xrange(key))
        yield key, key


def test_keys_are_stored_hashed_and_never_logged_or_recorded(rel: RelCluster, intruder: requests.Session) -> None:
    rel.put_action("env-printer", code=PRINT_ENV)
    ledger = Ledger()
    aid = rel.invoke("env-printer", {}, ledger)
    # a streamed OpenAI request too (its own code path through gateway and invoker)
    streamed = rel.http.post(f"{rel.apihost}/v1/completions", timeout=120,
                             json={"model": "canary", "prompt": "secret?", "max_tokens": 3, "stream": True})
    assert streamed.status_code == 200
    records = ledger.settle(rel.store)
    assert records[str(aid)].response.success, records[str(aid)].response
    assert records[str(aid)].logs, "the action's output should be in its record"
    secrets = [rel.key.split(":", 1)[1], intruder.auth[1]]  # type: ignore[index]
    assert all(len(secret) >= 32 for secret in secrets)
    for key, value in redis_values(rel.r):
        assert not any(secret in value for secret in secrets), f"a raw API key is stored in Redis under {key}"
    for path in rel.data_dir.rglob("*"):
        # text we write (logs, state, runtime output); model weights (registry, SSD tier) are skipped
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 8 * 2**20 and \
                not {"registry", "ssd"} & set(path.parts):
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), f"the API key appears in {path}"
    listed = rel.http.get(rel.url("activations"), params={"docs": "true", "limit": "200"}).text
    assert not any(secret in listed for secret in secrets)


def test_cache_socket_and_listening_ports_are_local_only(rel: RelCluster) -> None:
    settings = Settings(data_dir=rel.data_dir, redis_url=rel.redis.url)
    sock = settings.cache_socket_path
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode)
    assert mode & 0o007 == 0, f"the cache agent's socket is open to other users: {oct(mode & 0o777)}"
    assert os.stat(sock).st_uid == os.getuid()
    procs = [psutil.Process(rel.up.proc.pid), *rel.up.descendants()]
    if rel.redis.proc is not None:
        procs.append(psutil.Process(rel.redis.proc.pid))
    assert rel.runtimes(), "no action runtime is running to check"
    listening: list[tuple[str, str, int]] = []
    for proc in procs:
        try:
            conns = proc.net_connections("inet")
            name = " ".join(proc.cmdline()[1:4])
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                listening.append((name, conn.laddr.ip, conn.laddr.port))
    ports = {port for _n, _ip, port in listening}
    assert rel.port_of("gateway") in ports
    exposed = [entry for entry in listening if entry[1] not in ("127.0.0.1", "::1")]
    assert not exposed, f"listening beyond localhost: {exposed}"
    # the metrics ports (enabled for this cluster) answer locally and are among the checked sockets
    for port in rel.metrics_ports():
        assert port in ports
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
