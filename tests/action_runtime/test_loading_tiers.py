"""The model sources behind /init: a faas-llm checkpoint through the loader, and a registry model
through a real cache agent (zero-copy from its DRAM pool); outputs equal the Hugging Face directory's."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faas_llm.cache_client import CacheClient
from faas_llm.registry.local import FileRegistry
from faas_llm.settings import Settings
from tests.action_runtime.conftest import in_process
from tests.cache_agent.conftest import AgentProcess

MiB = 1024 * 1024
RUN = {"value": {"prompt": "Loading from the cache", "max_tokens": 16, "temperature": 0}}


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faas_llm.checkpoint import convert

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    convert(tiny_model_dir, out)
    return out


def init_and_run(settings: Settings, value: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Init a runtime with ``value``, run once, then stop it (its cache-agent lease is given back)."""
    with in_process(settings) as runtime:
        init = runtime.init(**value)
        assert init.status_code == 200, init.text
        return init.json(), runtime.post("/run", RUN).json()


def test_faas_llm_checkpoint_loads_with_the_loader(tmp_path: Path, tiny_model_dir: Path,
                                                   tiny_checkpoint: Path) -> None:
    settings = Settings(data_dir=tmp_path, loader_direct_io=False)
    _, reference = init_and_run(settings, {"checkpoint": str(tiny_model_dir)})
    init, result = init_and_run(settings, {"checkpoint": str(tiny_checkpoint)})
    assert init["source"] == "faas-llm" and init["load_tier"] == "local"
    assert result["token_ids"] == reference["token_ids"]


@pytest.fixture
def agent(settings: Settings, tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Settings]:
    node = settings.model_copy(update={
        "node_id": f"rt{os.getpid()}x{time.monotonic_ns() % 100000}",
        "registry_url": f"file://{tmp_path / 'registry'}",
        "dram_capacity_bytes": 16 * MiB, "ssd_capacity_bytes": 64 * MiB, "loader_direct_io": False,
    })
    FileRegistry(tmp_path / "registry").push(tiny_checkpoint, "demo/tiny")
    process = AgentProcess(node, tmp_path / "agent.log").start()
    try:
        yield node
    finally:
        process.stop()


def test_registry_model_through_the_cache_agent(agent: Settings, tiny_model_dir: Path) -> None:
    threads_before = set(threading.enumerate())
    _, reference = init_and_run(agent, {"checkpoint": str(tiny_model_dir)})
    cold, first = init_and_run(agent, {"model": "demo/tiny"})
    assert cold["source"] == "cache-agent" and cold["load_tier"] in ("registry", "ssd", "dram")
    warm, second = init_and_run(agent, {"model": "demo/tiny"})
    assert warm["load_tier"] == "dram"  # the second instance maps the agent's DRAM copy
    assert first["token_ids"] == second["token_ids"] == reference["token_ids"]
    assert second["model"] == "demo/tiny" and second["timings"]["load_tier"] == "dram"
    # each closed runtime gave its lease back and stopped heartbeating: no lease left, no thread
    assert CacheClient(agent, heartbeat=False).status().leases == 0
    assert not [t for t in set(threading.enumerate()) - threads_before if t.name == "cache-lease-heartbeat"]


def test_registry_model_without_an_agent_from_an_object_store(tmp_path: Path, tiny_checkpoint: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No cache agent (Knative): the registry's API finds the latest version and the runtime fetches it once."""
    import boto3
    from moto.server import ThreadedMotoServer

    from faas_llm.registry import open_registry

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runtime-models")
        settings = Settings(data_dir=tmp_path, registry_url="s3://runtime-models/faas", s3_endpoint_url=endpoint,
                            loader_direct_io=False)
        open_registry(settings).push(tiny_checkpoint, "demo/tiny")
        _, reference = init_and_run(settings, {"checkpoint": str(tiny_checkpoint)})
        init, result = init_and_run(settings, {"model": "demo/tiny"})
        assert init["source"] == "faas-llm" and init["load_tier"] == "registry"
        assert result["token_ids"] == reference["token_ids"]
        assert (settings.node_dir / "registry-fetch" / "demo" / "tiny" / "000001" / "index.json").is_file()
    finally:
        server.stop()


def test_cache_client_populates_the_mapping_of_a_4k_page_pool(agent: Settings) -> None:
    """On a DRAM pool of 4 KiB pages (/dev/shm here) the model comes back with its mapping populated
    (background threads, MADV_POPULATE_READ), so the first forward faults nothing; with
    ``populate_threads=0`` it is left to the first forward."""
    from faas_llm.checkpoint.region import buffer_address
    from tests.checkpoint.test_populate import resident_kib

    for threads in (2, 0):
        with CacheClient(agent, populate_threads=threads) as client:
            loaded = client.load_model("demo/tiny")
            lease = loaded.lease
            assert lease is not None and lease.reply.page_bytes == 4096
            buffer = lease.buffer()
            resident = resident_kib(buffer_address(buffer), buffer.nbytes) * 1024
            if threads:
                assert resident >= buffer.nbytes
            else:
                assert resident < buffer.nbytes // 2
            del buffer
            loaded.close()


def test_premap_policy() -> None:
    from faas_llm.cache_client import HUGE_PAGE, PREMAP_MAX_BYTES, premap_policy

    assert premap_policy(4096, 4 * 2**30)
    assert not premap_policy(HUGE_PAGE, 4 * 2**30)  # MAP_POPULATE per lease is a few ms there
    assert not premap_policy(4096, PREMAP_MAX_BYTES + 1)
    assert not premap_policy(0, 4 * 2**30)  # an agent that did not say


def test_a_prewarmed_runtime_leases_views_of_the_pool_it_premapped(agent: Settings) -> None:
    """prewarm maps the agent's whole pool and populates it; a later lease is a view of that mapping
    (no mapping or page-table work of its own), and the model computes the same as one mapped per lease."""
    import torch

    from action_runtime.prewarm import prewarm
    from faas_llm import cache_client
    from faas_llm.checkpoint.region import buffer_address
    from tests.checkpoint.test_populate import resident_kib

    ids = torch.tensor([[1, 5, 9, 2]])
    try:
        with CacheClient(agent) as client:  # no premap yet: a mapping of its own
            loaded = client.load_model("demo/tiny")
            with torch.inference_mode():
                expected = loaded.model(ids).logits
            loaded.close()
        prewarm(agent)  # premaps on a background thread
        for thread in threading.enumerate():
            if thread.name == "cache-premap-pool":
                thread.join()
        pool = cache_client._pool_mappings[CacheClient(agent, heartbeat=False).status().segment]
        base = buffer_address(memoryview(pool.mapping))
        assert resident_kib(base, pool.size) * 1024 == pool.size
        with CacheClient(agent) as client:
            loaded = client.load_model("demo/tiny")
            assert loaded.lease is not None
            address = buffer_address(loaded.lease.buffer())
            assert base + loaded.lease.reply.offset == address
            with torch.inference_mode():
                assert torch.equal(loaded.model(ids).logits, expected)
            loaded.close()
    finally:
        cache_client._pool_mappings.clear()


def test_a_premapped_pool_is_not_used_for_a_new_segment_of_the_same_name(tmp_path: Path) -> None:
    from faas_llm.cache_client import map_pool, premapped
    from faas_llm.checkpoint import SharedRegion

    first = SharedRegion.create("premap-test", 4 * MiB, shm_dir=tmp_path)
    try:
        stop = threading.Event()
        stop.set()  # a lease came first: the premap gives up and keeps nothing
        assert map_pool(str(first.path), stop=stop) is None
        assert premapped(str(first.path), 0, MiB) is None
        pool = map_pool(str(first.path))
        assert pool is not None and pool.size == 4 * MiB
        view = premapped(str(first.path), MiB, MiB)
        assert view is not None and view.nbytes == MiB
        assert premapped(str(first.path), 3 * MiB, 2 * MiB) is None  # past the end
        first.unlink()
        second = SharedRegion.create("premap-test", 4 * MiB, shm_dir=tmp_path)  # an agent restarted
        try:
            assert premapped(str(second.path), MiB, MiB) is None
        finally:
            second.unlink()
            second.close()
    finally:
        from faas_llm import cache_client

        cache_client._pool_mappings.clear()
        first.close()
