"""The DRAM tier: a checkpoint in a named shared-memory segment, used zero-copy by another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from faas_llm.checkpoint import SharedRegion, checkpoint_nbytes, read_index, read_into
from faas_llm.errors import CheckpointError
from tests.checkpoint.conftest import INPUT_IDS, logits, reference

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from faas_llm.checkpoint import SharedRegion, build_model, read_index, tensors_from_buffer

    name, offset, ckpt, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    index = read_index(ckpt)
    segment = SharedRegion.attach(name)  # read-only
    tensors = tensors_from_buffer(index, segment.view(offset, index.total_bytes))
    model = build_model(ckpt, tensors)
    lo, hi = segment.address, segment.address + segment.nbytes
    inside = all(lo <= p.data_ptr() < hi for p in model.parameters())
    ids = torch.tensor(json.loads(sys.argv[5]))
    with torch.inference_mode():
        logits = model(ids).logits.float()
    np.save(out, logits.numpy())
    print(json.dumps({"inside": inside, "writable": segment.writable, "pid_segment": str(segment.path)}))
    """
)


@pytest.fixture
def segment_name() -> Iterator[str]:
    name = f"faas-llm-test-{uuid.uuid4().hex[:12]}"
    yield name
    SharedRegion.path_for(name).unlink(missing_ok=True)


def test_round_trip_in_a_second_process(tiny_ckpt: Path, tiny_model_dir: Path, segment_name: str,
                                        tmp_path: Path) -> None:
    import numpy as np

    index = read_index(tiny_ckpt)
    offset = 3 * 4096  # a checkpoint placed at an aligned offset inside a larger pool
    segment = SharedRegion.create(segment_name, offset + checkpoint_nbytes(index) + 4096)
    try:
        read_into(tiny_ckpt, index, segment.view(offset, index.total_bytes))
        out = tmp_path / "logits.npy"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        result = subprocess.run(
            [sys.executable, "-c", CHILD, segment_name, str(offset), str(tiny_ckpt), str(out),
             json.dumps(INPUT_IDS.tolist())],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["inside"] is True  # zero-copy: every parameter lies in the mapped segment
        assert report["writable"] is False
        assert torch.equal(torch.from_numpy(np.load(out)), logits(reference(tiny_model_dir)))
    finally:
        segment.unlink()
        segment.close()
    assert not SharedRegion.path_for(segment_name).exists()


def test_segment_names_and_existence_are_checked(segment_name: str) -> None:
    with pytest.raises(CheckpointError, match="invalid shared-memory segment name"):
        SharedRegion.create("../etc", 4096)
    with pytest.raises(CheckpointError, match="does not exist"):
        SharedRegion.attach(segment_name)
    first = SharedRegion.create(segment_name, 5000)
    try:
        assert first.nbytes == 8192  # rounded up to the alignment
        with pytest.raises(CheckpointError, match="already exists"):
            SharedRegion.create(segment_name, 4096)
        first.view(0, 4)[:] = b"abcd"
        other = SharedRegion.attach(segment_name, writable=True)
        assert bytes(other.view(0, 4)) == b"abcd"  # the same pages
        other.close()
    finally:
        first.unlink()
        first.close()
