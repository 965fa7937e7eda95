"""A multi-model serverless workload from a trace: model catalog, Zipf popularity, load scaling."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench.sim.costs import ClusterSpec, GpuModel, ModelSpec
from bench.sim.trace import TraceRecord
from faas_llm.errors import ConfigError
from faas_llm.placement import RunTimeDistribution

#: (parameters in billions, how many models of that class): 32 models, 1-70B, ~0.8 TB in fp16
DEFAULT_CLASSES: tuple[tuple[float, int], ...] = (
    (1.1, 4), (2.7, 4), (3.8, 2), (7.0, 8), (8.0, 4), (13.0, 4), (14.0, 2), (34.0, 2), (70.0, 2),
)


def catalog(classes: Sequence[tuple[float, int]] = DEFAULT_CLASSES) -> list[ModelSpec]:
    """The models, named ``m00``... with their size class (``m07-7b``)."""
    sizes = [p for p, n in classes for _ in range(n)]
    return [ModelSpec(f"m{i:02d}-{p:g}b", p) for i, p in enumerate(sizes)]


def zipf_weights(n: int, s: float) -> list[float]:
    """Normalised Zipf weights ``1 / rank**s`` for ranks 1..n."""
    if n < 1 or s < 0:
        raise ConfigError(f"zipf needs n >= 1 and s >= 0, got n={n} s={s}")
    raw = [1.0 / (rank**s) for rank in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


@dataclass(frozen=True)
class Request:
    id: int
    t: float
    model: int  # index into the catalog
    ctx_tokens: int
    gen_tokens: int
    run_s: float  # true inference time on its model's instance


@dataclass(frozen=True)
class Workload:
    models: tuple[ModelSpec, ...]
    requests: tuple[Request, ...]
    #: popularity rank -> model index (rank 0 the most popular)
    ranking: tuple[int, ...]

    @property
    def span_s(self) -> float:
        return self.requests[-1].t - self.requests[0].t if self.requests else 0.0


def assign_models(
    records: Sequence[TraceRecord],
    models: Sequence[ModelSpec],
    *,
    zipf_s: float,
    seed: int,
    cluster: ClusterSpec,
    gpu: GpuModel,
) -> Workload:
    """Give each request a model by Zipf popularity; popularity ranks are a seeded shuffle (size-blind)."""
    if not records:
        raise ConfigError("an empty trace")
    rng = random.Random(seed)
    ranking = list(range(len(models)))
    rng.shuffle(ranking)
    cumulative = list(itertools.accumulate(zipf_weights(len(models), zipf_s)))
    requests = []
    for i, rec in enumerate(records):
        rank = min(bisect.bisect_left(cumulative, rng.random()), len(models) - 1)
        m = ranking[rank]
        run = gpu.run_s(models[m], cluster, rec.ctx_tokens, rec.gen_tokens)
        requests.append(Request(i, rec.t, m, rec.ctx_tokens, rec.gen_tokens, run))
    return Workload(tuple(models), tuple(requests), tuple(ranking))


def offered_load(workload: Workload, cluster: ClusterSpec, gpu: GpuModel) -> float:
    """GPU-seconds of inference asked for / GPU-seconds the cluster has over the trace's span."""
    span = workload.span_s
    if span <= 0:
        raise ConfigError("the trace spans no time")
    busy = sum(r.run_s * gpu.gpus(workload.models[r.model], cluster) for r in workload.requests)
    return busy / (cluster.nodes * cluster.gpus_per_node * span)


def scale_to_load(workload: Workload, target: float, cluster: ClusterSpec, gpu: GpuModel) -> Workload:
    """The same requests with arrival times stretched or squeezed so the offered load is ``target``."""
    if not target > 0:
        raise ConfigError(f"load must be > 0, got {target}")
    factor = offered_load(workload, cluster, gpu) / target
    t0 = workload.requests[0].t
    scaled = tuple(
        Request(r.id, (r.t - t0) * factor, r.model, r.ctx_tokens, r.gen_tokens, r.run_s) for r in workload.requests
    )
    return Workload(workload.models, scaled, workload.ranking)


def expected_run_s(workload: Workload, cluster: ClusterSpec, gpu: GpuModel) -> list[float]:
    """What a scheduler can know of a model's inference time: its rates at the workload's mean tokens."""
    n = len(workload.requests)
    ctx = sum(r.ctx_tokens for r in workload.requests) / n
    gen = sum(r.gen_tokens for r in workload.requests) / n
    return [
        gpu.prefill_s_per_token(m, cluster) * ctx + gpu.decode_s_per_token(m, cluster) * gen for m in workload.models
    ]


def run_distributions(
    workload: Workload, cluster: ClusterSpec, gpu: GpuModel, samples: int = 2000
) -> list[RunTimeDistribution]:
    """What a scheduler can know of a model's run-time *distribution*: the workload's (prompt, output)
    token pairs (history; ``samples`` evenly spaced ones) at the model's rates. Not the request's own length."""
    n = len(workload.requests)
    step = max(1, n // samples)
    tokens = [(r.ctx_tokens, r.gen_tokens) for r in workload.requests[::step]]
    out = []
    for m in workload.models:
        pre, dec = gpu.prefill_s_per_token(m, cluster), gpu.decode_s_per_token(m, cluster)
        out.append(RunTimeDistribution(ctx * pre + gen * dec for ctx, gen in tokens))
    return out
