"""The index: round trip, validation of every field, the region layout and the read plan (pure)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from faas_llm.checkpoint import (
    ALIGNMENT,
    FORMAT_VERSION,
    CheckpointIndex,
    PartitionEntry,
    TensorEntry,
    checkpoint_nbytes,
    parse_index,
    plan_reads,
    read_index,
)
from faas_llm.errors import CheckpointError

MiB = 1024 * 1024


def _index() -> CheckpointIndex:
    parts = (
        PartitionEntry("partition-00000.bin", 3 * 8 * MiB, 0, ("0" * 16,) * 3),
        PartitionEntry("partition-00001.bin", 8192, 3 * 8 * MiB, ("1" * 16,)),
    )
    tensors = {
        "a": TensorEntry("a", 0, 0, 16 * MiB, (4 * MiB,), "float32"),
        "b": TensorEntry("b", 0, 16 * MiB, 8, (2, 2), "float16"),
        "c": TensorEntry("c", 1, 4096, 4096, (2048,), "bfloat16"),
    }
    return CheckpointIndex(parts, tensors, {"tied": "a"}, ("config.json",))


def _data() -> dict[str, Any]:
    return json.loads(_index().dumps())


def test_round_trip_and_layout(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text(_index().dumps())
    index = read_index(tmp_path)
    assert index == _index()
    assert checkpoint_nbytes(index) == 3 * 8 * MiB + 8192
    assert checkpoint_nbytes(index) % ALIGNMENT == 0
    assert index.region_offset("c") == 3 * 8 * MiB + 4096
    assert index.region_offset("tied") == 0
    assert index.names() == ["a", "b", "c", "tied"]
    data = index.to_json()
    assert data["format_version"] == FORMAT_VERSION
    assert data["total_bytes"] == checkpoint_nbytes(index)


def test_plan_reads_covers_every_byte_once_in_whole_checksum_blocks() -> None:
    index = _index()
    for chunk in (1, 8 * MiB, 9 * MiB, 16 * MiB, 64 * MiB):
        tasks = plan_reads(index, chunk)
        covered = sorted((t.region_offset, t.region_offset + t.nbytes) for t in tasks)
        assert covered[0][0] == 0 and covered[-1][1] == index.total_bytes
        assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
        for t in tasks:
            assert t.offset % index.checksum_block == 0
            assert t.region_offset == index.partitions[t.partition].region_offset + t.offset
    assert len(plan_reads(index, 16 * MiB)) == 3  # 16 + 8 MiB of partition 0, then partition 1


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), "from the future"),
        (lambda d: d.update(format="safetensors"), "not a faas-llm checkpoint"),
        (lambda d: d["tensors"]["b"].update(dtype="float12"), "unknown dtype 'float12'"),
        (lambda d: d["tensors"]["c"].update(offset=8192), "past the end of partition-00001.bin"),
        (lambda d: d["tensors"]["b"].update(offset=100), "not 4096-aligned"),
        (lambda d: d["tensors"]["b"].update(nbytes=9), "needs 8"),
        (lambda d: d["tensors"]["b"].update(partition=7), "names partition 7"),
        (lambda d: d["partitions"][0].update(file="../evil.bin"), "outside the checkpoint directory"),
        (lambda d: d["partitions"][0].update(file="/etc/passwd"), "outside the checkpoint directory"),
        (lambda d: d["partitions"][1].update(file="sub/p.bin"), "not a plain"),
        (lambda d: d.update(files=["../../secret"]), "outside the checkpoint directory"),
        (lambda d: d["partitions"][0].update(nbytes=1000), "not a multiple of 4096"),
        (lambda d: d["partitions"][1].update(region_offset=0), "region_offset"),
        (lambda d: d["partitions"][0].update(checksums=["0" * 16]), "hex checksums"),
        (lambda d: d.update(aliases={"tied": "nope"}), "alias"),
        (lambda d: d.update(checksum={"algorithm": "md5", "block_bytes": 8 * MiB}), "unknown checksum"),
        (lambda d: d.update(tensors={}), "non-empty"),
    ],
)
def test_bad_index_is_refused_naming_the_problem(mutate: Any, problem: str) -> None:
    data = _data()
    mutate(data)
    with pytest.raises(CheckpointError, match=r"index\.json") as err:
        parse_index(data, "ck/index.json")
    assert problem in str(err.value)


def test_missing_or_garbled_index_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"index\.json.*missing"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"index\.json: invalid JSON"):
        read_index(tmp_path)
