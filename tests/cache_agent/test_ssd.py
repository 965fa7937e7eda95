"""The SSD tier in-process: verified atomic installs, capacity with LRU that skips pinned entries."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from cache_agent.ssd import SsdTier, verify_files
from faas_llm.errors import CheckpointError, NoCapacityError
from faas_llm.registry import FileRegistry, ModelVersion


def _copy_from(registry: FileRegistry, manifest: ModelVersion):  # type: ignore[no-untyped-def]
    return lambda tmp: registry.fetch(manifest, tmp)


def test_install_capacity_lru_and_pins(tmp_path: Path, tiny_ckpt: Path) -> None:
    registry = FileRegistry(tmp_path / "reg")
    a, b, c, d = (registry.push(tiny_ckpt, n) for n in "abcd")
    tier = SsdTier(tmp_path / "ssd", capacity=int(a.nbytes * 2.5))
    for m in (a, b):
        tier.install(m, _copy_from(registry, m))
        time.sleep(0.01)
    tier.touch(a.key)  # b is now the least recently used
    _, evicted = tier.install(c, _copy_from(registry, c))
    assert evicted == [b.key]
    assert sorted(e.key for e in tier.entries()) == [a.key, c.key]
    assert not (tmp_path / "ssd" / "models" / "_" / "b").joinpath("000001").exists()
    tier.pin(a.key)
    tier.pin(c.key)
    with pytest.raises(NoCapacityError):
        tier.install(d, _copy_from(registry, d))  # both residents are being read
    tier.unpin(c.key)
    _, evicted = tier.install(d, _copy_from(registry, d))
    assert evicted == [c.key]
    assert tier.used == a.nbytes + d.nbytes
    assert not list((tmp_path / "ssd" / ".tmp").iterdir())


def test_a_corrupt_download_is_never_installed(tmp_path: Path, tiny_ckpt: Path) -> None:
    registry = FileRegistry(tmp_path / "reg")
    m = registry.push(tiny_ckpt, "x")
    tier = SsdTier(tmp_path / "ssd", capacity=10 * m.nbytes)

    def corrupt_fetch(tmp: Path) -> None:
        registry.fetch(m, tmp)
        part = tmp / "partition-00000.bin"
        data = bytearray(part.read_bytes())
        data[100] ^= 0x01
        part.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="checksum mismatch"):
        tier.install(m, corrupt_fetch)
    assert tier.entries() == [] and tier.used == 0
    assert not (tmp_path / "ssd" / "models").exists() or not any((tmp_path / "ssd" / "models").rglob("*.bin"))
    assert not list((tmp_path / "ssd" / ".tmp").iterdir())

    def short_fetch(tmp: Path) -> None:
        registry.fetch(m, tmp)
        (tmp / "tokenizer.json").write_text("{}")

    with pytest.raises(CheckpointError, match="manifest says"):
        tier.install(m, short_fetch)
    entry, _ = tier.install(m, _copy_from(registry, m))
    verify_files(entry.path, m)
    # a restart finds it again; an entry whose file lost bytes is dropped
    assert [e.key for e in SsdTier(tmp_path / "ssd", 10 * m.nbytes).entries()] == []  # not re-indexed yet
    again = SsdTier(tmp_path / "ssd", 10 * m.nbytes)
    assert again.reindex() == [] and [e.key for e in again.entries()] == [m.key]
    with open(entry.path / "partition-00000.bin", "r+b") as fh:
        fh.truncate(4096)
    third = SsdTier(tmp_path / "ssd", 10 * m.nbytes)
    assert third.reindex() == ["models/_/x/000001"] and third.entries() == []
    shutil.rmtree(tmp_path / "reg")
