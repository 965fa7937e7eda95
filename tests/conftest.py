"""The shared test harness: a real redis-server for the session, a clean database per test,
settings that point at it, and demo models built once per session (no downloads)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from faas_llm.keys import Keys
from faas_llm.redis_server import RedisServer
from faas_llm.settings import Settings

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server process on a free port, with its own temp dir, for the whole session."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a clean database: flushed before and after each test."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def settings(redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Settings:
    """Settings for one test: the session's Redis (clean), a private data dir."""
    return Settings(redis_url=redis_server.url, data_dir=tmp_path / "data")


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


def _demo(tmp_path_factory: pytest.TempPathFactory, arch: str, dtype: str | None = None) -> Path:
    from faas_llm.demo_models import make_demo_model

    out = tmp_path_factory.mktemp(f"tiny-{arch}-{dtype or 'default'}")
    return make_demo_model(out, size="tiny", arch=arch, dtype=dtype)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama-style demo model (fp32) as a Hugging Face directory."""
    return _demo(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small Llama-style demo model (~10 M parameters, 2k context, ~4 ms a token on one CPU thread):
    for runs that must last while something happens to them (live migration)."""
    from faas_llm.demo_models import make_demo_model

    return make_demo_model(tmp_path_factory.mktemp("small-llama"), size="small")


@pytest.fixture(scope="session")
def tiny_model_dir_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo(tmp_path_factory, "llama", "float16")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (tied embeddings) demo model."""
    return _demo(tmp_path_factory, "gpt2")


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo(tmp_path_factory, "opt")


def _docker_engine_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `docker` tests without a Docker engine, saying why."""
    needs_gpu = any(item.get_closest_marker("gpu") for item in items)
    needs_docker = any(item.get_closest_marker("docker") for item in items)
    has_gpu = False
    if needs_gpu:
        import torch

        has_gpu = torch.cuda.is_available()
    has_docker = _docker_engine_available() if needs_docker else False
    for item in items:
        # markers, not keywords: a keyword also matches a directory name (tests/docker/)
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA device here (run on a lent GPU machine)"))
        if item.get_closest_marker("docker") and not has_docker:
            item.add_marker(pytest.mark.skip(reason="no Docker engine here"))
