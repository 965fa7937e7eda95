"""The cluster and the cost model, shared by every policy (one instance per run).

All times in seconds, sizes in bytes. Defaults describe a GPU node of a ServerlessLLM-
style cluster: 4 x 80 GB GPUs, a DRAM checkpoint cache, a local NVMe SSD cache, and a
model registry reached over a 10 Gb/s network. They were fixed before any policy was
compared and are the same for every policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from faas_llm.errors import ConfigError

GB = 1_000_000_000
MB = 1_000_000


@dataclass(frozen=True)
class ModelSpec:
    """A model of the catalog: name and parameter count (fp16 checkpoint: 2 bytes per parameter)."""

    name: str
    params_b: float

    @property
    def size_bytes(self) -> int:
        return int(self.params_b * 2 * GB)


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 8
    gpus_per_node: int = 4
    gpu_memory_gb: float = 80.0
    #: containers (instances) a node may hold at once
    slots_per_node: int = 4
    dram_cache_gb: float = 192.0
    ssd_cache_gb: float = 512.0
    #: read bandwidths into the GPU, bytes/s
    bw_dram: float = 20 * GB
    bw_ssd: float = 4 * GB
    bw_registry: float = 1.25 * GB
    #: seconds an idle instance is kept warm
    keep_alive_s: float = 60.0
    #: deployment-time copies of each checkpoint on node SSDs (ServerlessLLM downloads at deploy)
    ssd_replicas: int = 2
    #: sensitivity knob: one FIFO loader per node for every tier (default: a network fetch queue and an SSD
    #: read queue; DRAM loads go over each GPU's own PCIe link without queueing)
    single_loader: bool = False
    #: seconds a new instance spends outside the checkpoint load (runtime boot, init, the scheduler's reaction):
    #: 0 in the comparison (the same for every policy); measured in bench/sim_validate.py
    start_overhead_s: float = 0.0
    #: a live instance holds a lease on its checkpoint in the DRAM tier (faas-llm's runtime maps the DRAM pool:
    #: the cache agent never evicts a leased checkpoint); off in the comparison (GPU instances copy the weights)
    dram_lease_while_live: bool = False
    #: the new instance's load as faas-llm's cache agent runs it (cache_agent/agent.py), after the runtime's boot
    #: (``start_overhead_s``): the tier is decided when the load begins; concurrent loads of one model on a node share
    #: one fetch (single flight: the same tier and end); a load that is not a DRAM hit reserves its DRAM extent first,
    #: and when every resident checkpoint is leased (no room) the runtime loads the SSD copy into its own memory
    #: (tier ``local``; fetched from the registry first when not on SSD). Off in the comparison
    agent_loads: bool = False
    #: an idle instance evicted for room is killed (invoker/pool.py: graceful=False, SIGKILL): its DRAM lease is
    #: never released and lasts until the cache agent's lease TTL (``lease_ttl_s``) expires; 0: released at once
    evicted_lease_hold_s: float = 0.0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.slots_per_node < 1 or self.gpus_per_node < 1:
            raise ConfigError("a cluster needs >= 1 node, GPU and slot per node")
        if min(self.bw_dram, self.bw_ssd, self.bw_registry) <= 0:
            raise ConfigError("bandwidths must be > 0")
        if self.keep_alive_s < 0 or self.ssd_replicas < 0 or self.start_overhead_s < 0:
            raise ConfigError("keep_alive_s, ssd_replicas and start_overhead_s must be >= 0")

    @property
    def node_memory_mb(self) -> int:
        return int(self.gpus_per_node * self.gpu_memory_gb * 1000)

    @property
    def dram_bytes(self) -> int:
        return int(self.dram_cache_gb * GB)

    @property
    def ssd_bytes(self) -> int:
        return int(self.ssd_cache_gb * GB)

    def node_names(self) -> list[str]:
        return [f"n{i:02d}" for i in range(self.nodes)]


@dataclass(frozen=True)
class GpuModel:
    """Inference time from tokens: prefill is compute-bound, decode is memory-bandwidth-bound."""

    #: effective fp16 FLOP/s of one GPU (about half an H100/A100's dense peak)
    flops: float = 300e12
    #: effective HBM bytes/s of one GPU
    hbm_bw: float = 1.6e12
    #: GPU memory an instance holds, as a multiple of its checkpoint (KV cache, activations)
    memory_factor: float = 1.2

    def gpus(self, model: ModelSpec, cluster: ClusterSpec) -> int:
        """Whole GPUs an instance holds (tensor parallel when the model and its KV cache do not fit one)."""
        need_mb = model.size_bytes * self.memory_factor / MB
        return max(1, min(cluster.gpus_per_node, math.ceil(need_mb / (cluster.gpu_memory_gb * 1000))))

    def instance_memory_mb(self, model: ModelSpec, cluster: ClusterSpec) -> int:
        return int(self.gpus(model, cluster) * cluster.gpu_memory_gb * 1000)

    def prefill_s_per_token(self, model: ModelSpec, cluster: ClusterSpec) -> float:
        return 2 * model.params_b * 1e9 / (self.flops * self.gpus(model, cluster))

    def decode_s_per_token(self, model: ModelSpec, cluster: ClusterSpec) -> float:
        return model.size_bytes / (self.hbm_bw * self.gpus(model, cluster))

    def run_s(self, model: ModelSpec, cluster: ClusterSpec, ctx_tokens: int, gen_tokens: int) -> float:
        return ctx_tokens * self.prefill_s_per_token(model, cluster) + gen_tokens * self.decode_s_per_token(
            model, cluster
        )


@dataclass(frozen=True)
class MigrationCostSpec:
    """ServerlessLLM's resume cost ``a * tokens + b``: ``a`` is the model's prefill per token."""

    b_s: float = 0.2
    #: multiple of the prefill rate (recomputing the KV cache of the tokens so far)
    a_factor: float = 1.0
