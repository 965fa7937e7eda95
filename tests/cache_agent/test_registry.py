"""The model registry: names, atomic versioned pushes, listing, deletes; file:// and s3:// (moto server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from faas_llm.errors import ConfigError, NotFoundError, RequestError
from faas_llm.registry import FileRegistry, Registry, open_registry
from faas_llm.registry.push import push_model
from faas_llm.settings import Settings

BAD_NAMES = ["../etc", "a/../../b", "..", "a/..", "/abs", "a/b/c", "a//b", "", ".hidden", "a\\b", "a b", "x/.."]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_traversal_and_odd_names_rejected(tmp_path: Path, name: str) -> None:
    registry = FileRegistry(tmp_path / "reg")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    with pytest.raises(RequestError):
        registry.push(src, name)
    with pytest.raises(RequestError):
        registry.resolve(name)
    with pytest.raises(RequestError):
        registry.delete(name)
    assert not (tmp_path / "etc").exists()
    assert not any((tmp_path / "reg").rglob("f"))


def _roundtrip(registry: Registry, ckpt: Path, tmp_path: Path) -> None:
    v1 = registry.push(ckpt, "org/tiny")
    v2 = registry.push(ckpt, "org/tiny")
    plain = registry.push(ckpt, "tiny")
    assert (v1.version, v2.version, plain.version) == (1, 2, 1)
    assert registry.names() == ["org/tiny", "tiny"]
    assert [v.version for v in registry.versions("org/tiny")] == [1, 2]
    assert registry.resolve("org/tiny").version == 2
    assert registry.resolve("org/tiny", 1).data == v1.data
    assert [m.key for m in registry.list_models()] == ["org/tiny@2", "tiny@1"]
    local = registry.local_dir(v1)
    if isinstance(registry, FileRegistry):
        assert local is not None and (local / "index.json").read_bytes() == (ckpt / "index.json").read_bytes()
    else:
        assert local is None
    dest = tmp_path / "fetched"
    dest.mkdir()
    got = []
    registry.fetch(v1, dest, got.append)
    assert sum(got) == v1.nbytes
    for f in v1.files:
        assert (dest / f.path).read_bytes() == (ckpt / f.path).read_bytes()
    assert registry.delete("org/tiny", 1) == [1]
    assert [v.version for v in registry.versions("org/tiny")] == [2]
    assert registry.delete("org/tiny") == [2]
    with pytest.raises(NotFoundError):
        registry.resolve("org/tiny")
    with pytest.raises(NotFoundError):
        registry.delete("org/tiny")
    assert registry.names() == ["tiny"]


def test_file_registry_roundtrip(tmp_path: Path, tiny_ckpt: Path) -> None:
    registry = FileRegistry(tmp_path / "reg")
    _roundtrip(registry, tiny_ckpt, tmp_path)
    assert not (tmp_path / "reg" / "models" / "org").exists()  # a deleted model leaves nothing behind


def test_concurrent_pushes_get_distinct_versions(tmp_path: Path, tiny_ckpt: Path) -> None:
    registry = FileRegistry(tmp_path / "reg")
    results: list[int] = []
    errors: list[BaseException] = []

    def push() -> None:
        try:
            results.append(registry.push(tiny_ckpt, "race").version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [1, 2, 3, 4]
    assert len({v.data for v in registry.versions("race")}) == 4


def test_a_half_written_push_is_invisible(tmp_path: Path, tiny_ckpt: Path) -> None:
    """Files stored but no manifest (a pusher that died): readers see no such version."""
    registry = FileRegistry(tmp_path / "reg")
    from faas_llm.registry.base import list_files

    registry._store_files(tiny_ckpt, "_", "ghost", list_files(tiny_ckpt), None)
    assert registry.names() == []
    with pytest.raises(NotFoundError):
        registry.resolve("ghost")
    assert registry.push(tiny_ckpt, "ghost").version == 1


def test_push_converts_a_hf_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    from faas_llm.checkpoint import read_index

    registry = FileRegistry(tmp_path / "reg")
    version = push_model(registry, tiny_model_dir, "hf/tiny", work_dir=tmp_path / "work")
    dest = tmp_path / "out"
    dest.mkdir()
    registry.fetch(version, dest)
    assert read_index(dest).tensors
    assert list((tmp_path / "work").iterdir()) == []  # the converted copy is not left behind


def test_open_registry_urls(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert isinstance(open_registry(settings), FileRegistry)
    assert open_registry(settings).url == f"file://{tmp_path / 'registry'}"
    with pytest.raises(ConfigError):
        open_registry(settings, "file://host/dir")
    with pytest.raises(ConfigError):
        open_registry(settings, "http://x/y")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"models-{tmp_path.name.lower().replace('_', '-')[:40]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return Settings(data_dir=tmp_path, registry_url=f"s3://{bucket}/faas", s3_endpoint_url=moto_endpoint)


def test_s3_registry_roundtrip_against_moto_server(s3_settings: Settings, tiny_ckpt: Path, tmp_path: Path) -> None:
    from faas_llm.registry import S3Registry

    registry = open_registry(s3_settings)
    assert isinstance(registry, S3Registry)
    _roundtrip(registry, tiny_ckpt, tmp_path)


def test_s3_manifest_commit_is_exclusive(s3_settings: Settings, tiny_ckpt: Path) -> None:
    registry = open_registry(s3_settings)
    first = registry.push(tiny_ckpt, "x")
    # a second writer that believes version 1 is free must lose the conditional put
    assert registry._create_manifest("_", "x", first.model_copy(update={"data": "data/other"})) is False  # type: ignore[attr-defined]
    assert registry.resolve("x").data == first.data
