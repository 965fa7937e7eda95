"""The cache agent as a real process, with real client processes: single flight, LRU that
never evicts a leased checkpoint, lease expiry of a killed client, restart re-index,
corruption detection, the inventory in Redis, the fallback when the agent is down."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import torch

from faas_llm.cache_client import CacheClient
from faas_llm.errors import CacheAgentError, ConflictError, NoCapacityError, NotFoundError, RequestError
from faas_llm.keys import Keys
from faas_llm.registry import FileRegistry
from faas_llm.settings import Settings, child_environ
from faas_llm.types import CacheInventory, LoadTier
from tests.cache_agent.client_proc import digest
from tests.cache_agent.conftest import REPO, AgentProcess, wait_for

MiB = 1024 * 1024


def _spawn_client(settings: Settings, model: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.cache_agent.client_proc", model, *extra], cwd=REPO,
                            env=child_environ(settings), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _reference(ckpt: Path) -> tuple[str, list[float]]:
    """Digest and logits of the checkpoint loaded by the plain loader, in this process."""
    from faas_llm.checkpoint import load_model, read_index, tensors_from_buffer

    index = read_index(ckpt)
    buf = bytearray(index.total_bytes)
    from faas_llm.checkpoint import read_into

    read_into(ckpt, index, buf)
    model, _ = load_model(ckpt)
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 5, 9, 2]])).logits[0, -1, :8].tolist()
    return digest(tensors_from_buffer(index, buf)), logits


def test_two_clients_acquire_at_once_one_load_identical_tensors(
    agent: AgentProcess, registry: FileRegistry, tiny_ckpt: Path
) -> None:
    registry.push(tiny_ckpt, "org/tiny")
    start_at = f"{time.time() + 3.0:.3f}"  # both are past their imports by then on this slow machine
    procs = [_spawn_client(agent.settings, "org/tiny", "--start-at", start_at, *extra)
             for extra in ((), ("--forward",))]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    ref_digest, ref_logits = _reference(tiny_ckpt)
    assert outs[0]["digest"] == outs[1]["digest"] == ref_digest
    assert outs[1]["logits"] == pytest.approx(ref_logits)  # a real model built on the shared segment
    assert outs[0]["offset"] == outs[1]["offset"] and outs[0]["segment"] == outs[1]["segment"]
    assert {o["tier"] for o in outs} <= {"registry", "dram"} and "registry" in {o["tier"] for o in outs}
    status = CacheClient(agent.settings, heartbeat=False).status()
    assert status.counters["dram_loads"] == 1
    assert status.counters["registry_fetches"] == 1
    assert status.leases == 0  # both released on exit


def test_dram_lru_victim_and_in_use_never_evicted(
    agent_settings: Settings, agent_factory: type[AgentProcess], registry: FileRegistry, tiny_ckpt: Path
) -> None:
    settings = agent_settings.model_copy(update={"dram_capacity_bytes": 6 * MiB})  # three tiny checkpoints
    agent = agent_factory(settings).start()  # type: ignore[call-arg]
    for name in "abcde":
        registry.push(tiny_ckpt, name)
    client = CacheClient(settings)

    def resident() -> set[str]:
        return {e.key.split("@")[0] for e in client.status().dram}

    held_a = client.acquire("a")  # "a" is the oldest, but in use throughout
    client.acquire("b").release()
    client.acquire("c").release()
    client.acquire("b").release()  # now c is the least recently used that is not in use
    assert resident() == {"a", "b", "c"}
    held_d = client.acquire("d")
    assert held_d.tier is LoadTier.REGISTRY
    assert resident() == {"a", "b", "d"}
    held_b = client.acquire("b")
    assert held_b.tier is LoadTier.DRAM
    # every resident checkpoint is leased: a fourth cannot come in, nothing is evicted
    with pytest.raises(NoCapacityError):
        client.acquire("e")
    assert resident() == {"a", "b", "d"}
    # a container starting now still gets "e": from the SSD copy the refused acquire left, into its own memory
    with pytest.raises(NoCapacityError):
        client.load_model("e", fallback=False)
    private = client.load_model("e")
    assert private.tier is LoadTier.LOCAL and private.lease is None
    with torch.inference_mode():
        assert private.model(torch.tensor([[1, 2]])).logits.shape[-1] > 0
    assert resident() == {"a", "b", "d"}
    assert held_a.tensors()  # the leased memory still holds its checkpoint
    status = client.status()
    assert status.counters["dram_evictions"] == 1
    held_a.release()
    assert client.acquire("e").tier is LoadTier.SSD  # fetched by the refused acquire, now loaded
    assert resident() == {"b", "d", "e"}
    assert "faas_cache_evictions_total{tier=\"dram\"} 2.0" in client.metrics()
    with pytest.raises(ConflictError):
        client.evict("b")  # leased
    held_b.release()
    assert client.evict("b") == ["b@1"]
    assert client.evict("b", "ssd") == ["b@1"]
    status = client.status()
    assert "b@1" not in {e.key for e in status.dram} | {e.key for e in status.ssd}
    client.close()
    agent.stop()


def test_killed_clients_lease_expires(
    agent_settings: Settings, agent_factory: type[AgentProcess], registry: FileRegistry, tiny_ckpt: Path
) -> None:
    settings = agent_settings.model_copy(update={"lease_ttl_s": 1.0})
    agent_factory(settings).start()  # type: ignore[call-arg]
    registry.push(tiny_ckpt, "tiny")
    holder = _spawn_client(settings, "tiny", "--hold")
    assert holder.stdout is not None
    json.loads(holder.stdout.readline())
    client = CacheClient(settings, heartbeat=False)
    assert client.status().leases == 1
    time.sleep(2.5)  # well past the TTL: the holder's heartbeats keep its lease
    assert client.status().leases == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    wait_for(lambda: client.status().leases == 0, timeout_s=10)
    status = client.status()
    assert status.counters["leases_expired"] == 1
    assert status.dram[0].leases == 0
    holder.stdin.close()  # type: ignore[union-attr]
    holder.stdout.close()
    holder.stderr.close()  # type: ignore[union-attr]


def test_restart_reindexes_ssd_and_corruption_is_refetched(
    agent_settings: Settings, agent_factory: type[AgentProcess], registry: FileRegistry, tiny_ckpt: Path
) -> None:
    registry.push(tiny_ckpt, "org/m")
    first = agent_factory(agent_settings).start()  # type: ignore[call-arg]
    client = CacheClient(agent_settings)
    reply = client.prefetch("org/m", "ssd", wait=True)
    assert reply.done and reply.version == 1
    assert [e.key for e in client.status().ssd] == ["org/m@1"]
    first.stop()
    entry = agent_settings.ssd_path / "models" / "org" / "m" / "000001"
    assert (entry / ".entry.json").is_file()
    # debris a crash would leave: a download in progress, an entry without its .entry.json
    (agent_settings.ssd_path / ".tmp" / "dead").mkdir(parents=True)
    broken = agent_settings.ssd_path / "models" / "_" / "half" / "000003"
    broken.mkdir(parents=True)
    (broken / "partition-00000.bin").write_bytes(b"x" * 100)

    second = agent_factory(agent_settings).start()  # type: ignore[call-arg]
    status = client.status()
    assert [e.key for e in status.ssd] == ["org/m@1"]  # re-indexed from disk
    assert not broken.exists() and not (agent_settings.ssd_path / ".tmp" / "dead").exists()
    lease = client.acquire("org/m")
    assert lease.tier is LoadTier.SSD
    assert client.status().counters.get("registry_fetches", 0) == 0
    lease.release()
    second.stop()

    # flip bytes in the SSD copy: the next DRAM load must detect it, fetch again, serve good bytes
    partition = entry / "partition-00000.bin"
    data = bytearray(partition.read_bytes())
    data[4096:4104] = bytes(b ^ 0xFF for b in data[4096:4104])
    partition.write_bytes(bytes(data))
    agent_factory(agent_settings).start()  # type: ignore[call-arg]
    lease = client.acquire("org/m")
    assert lease.tier is LoadTier.REGISTRY
    status = client.status()
    assert status.counters["corrupt_refetches"] == 1 and status.counters["registry_fetches"] == 1
    ref_digest, _ = _reference(tiny_ckpt)
    assert digest(lease.tensors()) == ref_digest
    assert partition.read_bytes() == (tiny_ckpt / "partition-00000.bin").read_bytes()
    client.close()


def test_inventory_in_redis_with_ttl(
    agent: AgentProcess, registry: FileRegistry, tiny_ckpt: Path, redis_client: redis.Redis
) -> None:
    registry.push(tiny_ckpt, "org/inv")
    client = CacheClient(agent.settings)
    lease = client.acquire("org/inv")
    key = Keys(agent.settings.key_prefix).node_cache(agent.settings.node_id)

    def has_model() -> bool:
        raw = redis_client.get(key)
        return raw is not None and "org/inv" in CacheInventory.model_validate_json(raw).dram.models

    wait_for(has_model)
    inventory = CacheInventory.model_validate_json(redis_client.get(key))  # type: ignore[arg-type]
    assert inventory.node == agent.settings.node_id
    assert inventory.ssd.models == ["org/inv"]
    assert inventory.dram.capacity_bytes == 16 * MiB
    assert inventory.dram.free_bytes == 14 * MiB  # one 2 MiB extent
    assert inventory.dram.read_bandwidth > 0 and inventory.ssd.read_bandwidth > 0
    assert inventory.registry_bandwidth > 0
    assert 0 < redis_client.pttl(key) <= 3000
    registry.push(tiny_ckpt, "org/inv2")
    assert client.prefetch("org/inv2", "dram").done is False  # queued; loads in the background
    wait_for(lambda: {e.key for e in client.status().dram} == {"org/inv@1", "org/inv2@1"})
    wait_for(lambda: CacheInventory.model_validate_json(redis_client.get(key)).dram.models  # type: ignore[arg-type]
             == ["org/inv", "org/inv2"])
    lease.release()
    client.close()
    agent.stop()
    assert redis_client.get(key) is None  # withdrawn on a clean stop


def test_errors_are_typed(agent: AgentProcess, registry: FileRegistry) -> None:
    client = CacheClient(agent.settings)
    with pytest.raises(NotFoundError):
        client.acquire("no/such-model")
    with pytest.raises(RequestError):
        client.acquire("../etc/passwd")
    # a raw, malformed request over the socket: a typed error reply, the agent lives on
    for raw in (b"{not json}\n", b'{"op": "acquire", "model": "a/../b"}\n', b'{"op": "explode"}\n'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(agent.settings.cache_socket_path))
            sock.sendall(raw)
            reply = json.loads(sock.makefile("rb").readline())
        assert reply["ok"] is False and reply["kind"] == "RequestError"
    assert client.available()


def test_client_without_agent_errors_or_falls_back_to_ssd(
    agent_settings: Settings, agent_factory: type[AgentProcess], registry: FileRegistry, tiny_ckpt: Path
) -> None:
    client = CacheClient(agent_settings)
    with pytest.raises(CacheAgentError, match="no cache agent"):
        client.acquire("tiny")
    with pytest.raises(CacheAgentError, match="no local copy"):
        client.load_model("tiny")
    registry.push(tiny_ckpt, "tiny")
    agent = agent_factory(agent_settings).start()  # type: ignore[call-arg]
    client.prefetch("tiny", "ssd", wait=True)
    agent.stop()
    loaded = client.load_model("tiny")
    assert loaded.tier is LoadTier.LOCAL and loaded.lease is None
    with torch.inference_mode():
        assert loaded.model(torch.tensor([[1, 2]])).logits.shape[-1] > 0
    with pytest.raises(CacheAgentError):
        client.load_model("tiny", fallback=False)
    assert not any(p.name.startswith(f"faas-llm-{agent_settings.key_prefix}-{agent_settings.node_id}-")
                   for p in agent_settings.dram_pool_dir.iterdir())  # the segment went with the agent


def test_cli_push_list_delete(agent_settings: Settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    env = child_environ(agent_settings)
    exe = str(Path(sys.executable).with_name("faas-llm"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "model", *args], env=env, capture_output=True, text=True, timeout=120)

    registry = FileRegistry(Path(agent_settings.registry.removeprefix("file://")))
    registry.push(tiny_model_dir, "org/cli")  # version 1 (any directory goes through the library)
    pushed = run("push", str(tiny_model_dir), "--name", "org/cli")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed org/cli version 2" in pushed.stdout
    assert registry.resolve("org/cli").files != registry.resolve("org/cli", 1).files  # v2 was converted
    listed = run("list")
    assert listed.returncode == 0 and "org/cli" in listed.stdout and " 2 " in listed.stdout
    bad = run("push", str(tiny_model_dir), "--name", "../../escape")
    assert bad.returncode == 1 and "not a valid model name" in bad.stderr
    assert not (tmp_path / "escape").exists()
    deleted = run("delete", "org/cli")
    assert deleted.returncode == 0 and "1, 2" in deleted.stdout
    assert registry.names() == []


def test_heartbeat_thread_lives_only_while_a_lease_is_held(agent: AgentProcess, registry: FileRegistry,
                                                           tiny_ckpt: Path) -> None:
    """No lease, no heartbeat: releasing the last lease, closing the client, or dropping the model
    (and with it the client) ends the thread, so nothing heartbeats an agent that is gone."""
    import gc
    import threading

    def heartbeats() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "cache-lease-heartbeat" and t not in before]

    before = set(threading.enumerate())
    registry.push(tiny_ckpt, "org/tiny")
    client = CacheClient(agent.settings)
    first, second = client.acquire("org/tiny"), client.acquire("org/tiny")
    assert len(heartbeats()) == 1  # one thread per client, however many leases
    first.release()
    assert len(heartbeats()) == 1  # still one lease to keep
    second.release()
    wait_for(lambda: not heartbeats(), 5)
    assert client.status().leases == 0
    client.acquire("org/tiny")  # a new lease starts a new thread; close() ends it and releases
    assert len(heartbeats()) == 1
    client.close()
    assert not heartbeats() and client.status().leases == 0

    loaded = CacheClient(agent.settings).load_model("org/tiny", fallback=False)
    assert len(heartbeats()) == 1
    del loaded  # the model, its lease and its client dropped unclosed: the thread ends (the agent expires the lease)
    gc.collect()
    wait_for(lambda: not heartbeats(), 5)


def test_early_meta_lets_the_client_build_while_the_agent_reads(
    agent: AgentProcess, registry: FileRegistry, tiny_ckpt: Path
) -> None:
    registry.push(tiny_ckpt, "org/tiny")
    client = CacheClient(agent.settings, heartbeat=False)
    seen: list[Path] = []
    loaded = client.load_model("org/tiny", on_meta=seen.append)  # a registry miss: meta before the read
    assert loaded.lease is not None and loaded.tier is LoadTier.REGISTRY
    assert seen == [Path(loaded.lease.reply.meta_dir)] and (seen[0] / "config.json").is_file()
    _, ref_logits = _reference(tiny_ckpt)
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([[1, 5, 9, 2]])).logits[0, -1, :8].tolist()
    assert logits == pytest.approx(ref_logits)  # the early skeleton got the agent's tensors
    loaded.close()
    metas: list[object] = []
    lease = client.acquire("org/tiny", on_meta=metas.append)  # a DRAM hit: no meta line, just the reply
    assert lease.tier is LoadTier.DRAM and metas == []
    lease.release()
    client.evict("org/tiny", "dram")
    lease = client.acquire("org/tiny", on_meta=metas.append)  # an SSD hit: one meta line, then the reply
    assert lease.tier is LoadTier.SSD and len(metas) == 1
    lease.release()
    client.close()
