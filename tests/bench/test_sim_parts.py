"""The simulator's building blocks: traces, workload, caches, cost model."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bench.sim.cache import LRUCache
from bench.sim.costs import GB, ClusterSpec, GpuModel, ModelSpec
from bench.sim.trace import TraceRecord, bursty_variant, interarrival_cv, load_named, load_trace
from bench.sim.workload import assign_models, catalog, expected_run_s, offered_load, scale_to_load, zipf_weights
from faas_llm.errors import ConfigError


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


def test_trace_parses_seven_digit_timestamps_and_sorts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", [
        "2023-11-16 18:15:47.5000000,10,5",
        "2023-11-16 18:15:46.6805900,374,44",
        "2023-11-16 18:16:46.6805900,0,0",
    ])
    recs = load_trace(path)
    assert [r.t for r in recs] == pytest.approx([0.0, 0.81941, 60.0])
    assert (recs[0].ctx_tokens, recs[0].gen_tokens) == (374, 44)
    assert (recs[2].ctx_tokens, recs[2].gen_tokens) == (1, 1)  # at least one token each
    assert len(load_trace(path, limit=2)) == 2


def test_bad_traces_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_trace(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="bad row"):
        load_trace(write_csv(tmp_path / "bad.csv", ["2023-11-16 18:15:46.1,ten,5"]))
    with pytest.raises(ConfigError, match="no requests"):
        load_trace(write_csv(tmp_path / "empty.csv", []))
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="missing columns"):
        load_trace(tmp_path / "cols.csv")
    with pytest.raises(ConfigError, match="unknown trace"):
        load_named("chat")


def test_the_real_traces_load() -> None:
    conv = load_named("conv", limit=500)
    assert len(conv) == 500 and conv[0].t == 0.0
    assert all(a.t <= b.t for a, b in itertools.pairwise(conv))


def test_bursty_variant_keeps_requests_and_rate_and_is_burstier() -> None:
    recs = [TraceRecord(float(i), 100 + i, 10) for i in range(4000)]
    bursty = bursty_variant(recs, cv=4.0, seed=3)
    assert [r.ctx_tokens for r in bursty] == [r.ctx_tokens for r in recs]
    assert bursty[-1].t == pytest.approx(recs[-1].t, rel=0.25)
    assert interarrival_cv(recs) == pytest.approx(0.0)
    assert interarrival_cv(bursty) == pytest.approx(4.0, rel=0.3)
    assert bursty == bursty_variant(recs, cv=4.0, seed=3)
    with pytest.raises(ConfigError):
        bursty_variant(recs, cv=0.0, seed=3)


def test_zipf_weights() -> None:
    w = zipf_weights(10, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(w))
    assert w[0] / w[1] == pytest.approx(2.0)
    assert zipf_weights(4, 0.0) == pytest.approx([0.25] * 4)
    with pytest.raises(ConfigError):
        zipf_weights(0, 1.0)


def test_model_assignment_is_seeded_skewed_and_scaled_to_the_load() -> None:
    cluster, gpu = ClusterSpec(), GpuModel()
    recs = [TraceRecord(i * 0.5, 500, 50) for i in range(5000)]
    models = catalog()
    assert len(models) == 32 and len({m.name for m in models}) == 32
    a = assign_models(recs, models, zipf_s=1.0, seed=1, cluster=cluster, gpu=gpu)
    b = assign_models(recs, models, zipf_s=1.0, seed=1, cluster=cluster, gpu=gpu)
    c = assign_models(recs, models, zipf_s=1.0, seed=2, cluster=cluster, gpu=gpu)
    assert a == b and a != c
    counts = [sum(1 for r in a.requests if r.model == m) for m in a.ranking]
    assert counts[0] > 3 * counts[-1] > 0  # the most popular model gets far more than the least
    for target in (0.1, 0.4):
        scaled = scale_to_load(a, target, cluster, gpu)
        assert offered_load(scaled, cluster, gpu) == pytest.approx(target)
        assert [r.model for r in scaled.requests] == [r.model for r in a.requests]
    assert len(expected_run_s(a, cluster, gpu)) == 32
    with pytest.raises(ConfigError):
        scale_to_load(a, 0.0, cluster, gpu)


def test_cost_model_sizes_gpus_and_inference_time() -> None:
    cluster, gpu = ClusterSpec(), GpuModel()
    small, big = ModelSpec("s", 7.0), ModelSpec("b", 70.0)
    assert small.size_bytes == 14 * GB
    assert gpu.gpus(small, cluster) == 1 and gpu.gpus(big, cluster) == 3
    assert gpu.instance_memory_mb(big, cluster) == 3 * 80_000
    # decode is memory-bound: 14 GB over 1.6 TB/s per token; prefill 14 GFLOP over 300 TFLOP/s per token
    assert gpu.run_s(small, cluster, 1000, 100) == pytest.approx(1000 * 14e9 / 300e12 + 100 * 14e9 / 1.6e12)
    assert gpu.run_s(big, cluster, 0, 100) < 10 * gpu.run_s(small, cluster, 0, 100)  # tensor parallel
    with pytest.raises(ConfigError):
        ClusterSpec(nodes=0)
    with pytest.raises(ConfigError):
        ClusterSpec(bw_ssd=0)


def test_lru_cache_evicts_least_recent_unpinned() -> None:
    cache = LRUCache(100)
    assert cache.insert("a", 40) and cache.insert("b", 40)
    cache.touch("a")
    assert cache.insert("c", 40)  # evicts b, the least recently used
    assert cache.names() == ["a", "c"] and cache.used == 80 and cache.evictions == 1
    cache.pin("a")
    assert cache.insert("d", 60)  # a is pinned: c goes
    assert cache.names() == ["a", "d"]
    assert not cache.insert("e", 70)  # only d could go, not enough
    assert cache.names() == ["a", "d"]
    assert not cache.insert("huge", 101)
    cache.unpin("a")
    assert cache.insert("e", 70) and "a" not in cache
    with pytest.raises(ConfigError):
        cache.unpin("e")
    with pytest.raises(ConfigError):
        cache.pin("zzz")
    with pytest.raises(ConfigError):
        LRUCache(-1)


def test_pins_nest() -> None:
    cache = LRUCache(10)
    cache.insert("a", 10)
    cache.pin("a")
    cache.pin("a")
    cache.unpin("a")
    assert not cache.insert("b", 10)
    cache.unpin("a")
    assert cache.insert("b", 10)
