"""Settings: every tunable of faas-llm, declared once, typed, with a default and a sentence.

This is the only module that reads the environment. Each field ``foo_bar`` is read
from ``FAAS_LLM_FOO_BAR``; a field may also name a conventional variable of its own
(``PORT`` for the Knative contract) in ``json_schema_extra={"env": ...}``, read
when the prefixed one is absent.

Components take a :class:`Settings` object (usually :func:`get_settings`) and never
call ``os.environ`` themselves. Bad values raise :class:`~faas_llm.errors.ConfigError`
naming the variable and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from faas_llm.errors import ConfigError

ENV_PREFIX = "FAAS_LLM_"

MiB = 1024 * 1024
GiB = 1024 * MiB


def _default_data_dir() -> Path:
    return Path.home() / ".faas-llm"


class Settings(BaseModel):
    """All settings. Construct with :meth:`from_env` (or directly in tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- cluster -----------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL shared by every service.")
    key_prefix: str = Field(
        "faas", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every Redis key, stream and channel faas-llm creates.",
    )
    node_id: str = Field(
        "node0", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Identity of this node (invoker, cache agent, Celery queue node.<id>).",
    )
    data_dir: Path = Field(default_factory=_default_data_dir, description="Root of local state (caches, runtimes).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of services.")

    # --- gateway -----------------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    gateway_port: int = Field(3233, ge=1, le=65535, description="Port of the gateway (OpenWhisk's standalone port).")
    gateway_workers: int = Field(2, ge=1, le=64, description="gunicorn worker processes of the gateway.")
    gateway_threads: int = Field(16, ge=1, le=256, description="Threads per gateway worker (gthread).")
    gateway_fast_path: bool = Field(
        True, description="Serve warm invokes (OpenWhisk invoke, non-streamed OpenAI completions) without Flask's "
        "per-request machinery (gateway/fastpath.py); the same responses. Off: every request through Flask.")
    gateway_metrics_dir: Path | None = Field(
        None, description="Prometheus multiprocess directory of the gateway's gunicorn workers, so /metrics "
        "sums them all (empty: data_dir/gateway-metrics/<port>); emptied when the gateway starts.",
    )
    max_payload_bytes: int = Field(1 * MiB, ge=1024, description="Largest accepted request body (413 above).")
    max_result_bytes: int = Field(1 * MiB, ge=1024, description="Largest action result kept (larger: an error).")
    max_log_bytes: int = Field(10 * MiB, ge=1024, description="Largest log text kept per activation.")
    invocations_per_minute: int = Field(60, ge=1, description="Per-namespace invocation rate limit (429 above).")
    concurrent_invocations: int = Field(30, ge=1, description="Per-namespace in-flight invocation limit.")
    blocking_wait_max_ms: int = Field(60_000, ge=1, le=600_000, description="Longest a blocking invoke waits.")
    activation_retention_s: int = Field(7 * 86400, ge=60, description="How long activation records are kept.")

    # --- action defaults (OpenWhisk limits) ----------------------------------------
    action_timeout_ms: int = Field(60_000, ge=100, le=300_000, description="Default action timeout.")
    action_memory_mb: int = Field(2048, ge=128, le=1_048_576, description="Default memory limit of an action.")
    action_concurrency: int = Field(1, ge=1, le=500, description="Default concurrent activations per container.")

    # --- action runtime ------------------------------------------------------------
    runtime_host: str = Field("127.0.0.1", description="Address an action runtime binds to.")
    runtime_port: int = Field(
        8080, ge=1, le=65535, json_schema_extra={"env": "PORT"},
        description="Port an action runtime listens on (Knative's $PORT).",
    )
    runtime_threads: int = Field(
        64, ge=1, le=256, description="Requests an action runtime handles at once (its HTTP server's threads): at "
        "least the limits.concurrency of the actions it may serve, whose runs it batches.")
    runtime_drain_s: float = Field(30.0, ge=0, description="Grace period to drain in-flight runs on SIGTERM.")
    runtime_torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads (0: chosen by the model's size, see "
        "runtime_single_thread_below_params).",
    )
    runtime_single_thread_below_params: int = Field(
        50_000_000, ge=0, description="With runtime_torch_threads 0, a model with fewer parameters runs on one "
        "torch intra-op thread (larger ones keep torch's default); 0: always torch's default.",
    )
    runtime_populate_threads: int = Field(
        2, ge=0, description="Threads that build the page tables of a checkpoint mapped from a DRAM pool of 4 KiB "
        "pages (MADV_POPULATE_READ), so the first forward pays no page faults; 0: map lazily.",
    )
    runtime_premap_pool_max_bytes: int = Field(
        16 * 1024**3, ge=0, description="A prewarmed runtime maps and populates the cache agent's whole DRAM pool "
        "of 4 KiB pages up to this size before /init (2 MiB of page tables per GiB per runtime), so a lease is a "
        "view with its page tables built; 0: never.",
    )
    runtime_kv_cache_bytes: int = Field(
        512 * MiB, ge=MiB, description="Memory budget of one runtime's KV cache (every sequence it batches): "
        "when its blocks run out, new requests queue and the newest running sequence is preempted (recomputed "
        "later); raised to one whole context of the model if smaller.",
    )
    runtime_kv_block_tokens: int = Field(32, ge=1, le=1024, description="Token positions in one KV cache block.")
    runtime_max_batch: int = Field(
        256, ge=1, le=4096, description="Most sequences one runtime decodes together (the invoker sends a container "
        "at most its action's limits.concurrency runs; runtime_threads bounds the requests it serves at once).",
    )
    runtime_step_tokens: int = Field(
        64, ge=1, le=65536, description="Tokens one forward step computes besides the decodes: prompts are "
        "prefilled in chunks of what is left, so a long prompt stalls the running sequences for one chunk at most.",
    )
    runtime_batch_invariance: Literal["auto", "require", "off"] = Field(
        "auto", description="require: batch only with a forward that gives every run the bits it would get alone "
        "(checked at /init; else one model call per sequence); off: batch anyway; auto: require on a CPU, off on "
        "a GPU.",
    )
    runtime_device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description="Where a runtime serves its model: cpu, cuda, "
        "cuda:N, or auto (the first GPU the runtime sees, else the CPU).",
    )
    runtime_model: str = Field(
        "", description="Model a runtime loads at start with no /init (Knative): a registry name or a checkpoint "
        "directory (starting with /, . or ~); empty: wait for /init.",
    )

    # --- checkpoint loader ---------------------------------------------------------
    loader_chunk_bytes: int = Field(64 * MiB, ge=MiB, description="Size of one sequential read of the loader.")
    loader_threads: int = Field(2, ge=1, le=32, description="Reader threads of the loader.")
    loader_direct_io: bool = Field(True, description="Use O_DIRECT where the file system allows it.")
    loader_huge_pages: bool = Field(True, description="Back the loader's region with huge pages where available.")
    loader_gpu_threads: int = Field(
        0, ge=0, le=64, description="Reader threads of the GPU pipeline (each with its own pinned staging buffers "
        "and CUDA stream); 0: one per CPU, at most 16.",
    )
    loader_gpu_chunk_bytes: int = Field(
        16 * MiB, ge=MiB, description="One read of the GPU pipeline (each reader thread pins two of them).",
    )

    # --- cache agent ---------------------------------------------------------------
    registry_url: str = Field(
        "", description="Model registry: file:///dir or s3://bucket/prefix (empty: data_dir/registry)."
    )
    s3_endpoint_url: str = Field("", description="S3 endpoint for an s3:// registry (empty: AWS default).")
    cache_socket: Path | None = Field(
        None, description="Unix socket of the node's cache agent (empty: data_dir/<node>/agent.sock)."
    )
    dram_capacity_bytes: int = Field(4 * GiB, ge=0, description="Size of the cache agent's shared-memory DRAM pool.")
    ssd_capacity_bytes: int = Field(64 * GiB, ge=0, description="Capacity of the cache agent's SSD tier.")
    ssd_dir: Path | None = Field(None, description="SSD tier directory (empty: data_dir/<node>/ssd).")
    lease_ttl_s: float = Field(30.0, gt=0, description="TTL of a client's lease on a DRAM checkpoint.")
    inventory_ttl_s: float = Field(10.0, gt=0, description="TTL of a node's published cache inventory.")
    dram_pool_dir: Path = Field(Path("/dev/shm"), description="tmpfs directory holding the DRAM pool's segment.")
    cache_metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port of the cache agent (0: off).")

    # --- invoker -------------------------------------------------------------------
    prewarm_count: int = Field(1, ge=0, le=64, description="Prewarmed runtimes each invoker keeps ready.")
    max_containers: int = Field(4, ge=1, le=1024, description="Container slots of a node.")
    node_gpus: str = Field(
        "", pattern=r"^([0-9]+(,[0-9]+)*)?$", description="GPU ids of this node, comma-separated (e.g. 0,1): each "
        "runtime the invoker starts gets one of its own (CUDA_VISIBLE_DEVICES, runtime_device cuda), so a node "
        "runs at most one runtime per GPU; empty: CPU runtimes.",
    )
    node_memory_mb: int = Field(16_384, ge=128, description="Memory a node gives to containers.")
    keep_alive_s: float = Field(600.0, ge=0, description="Default idle time before a container is removed.")
    keep_idle_until_needed: bool = Field(
        False, description="Past its keep-alive an idle container stays until its slot is wanted (evicted LRU).")
    max_idle_s: float = Field(3600.0, ge=0, description="With keep_idle_until_needed: longest idle time kept.")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="How often an invoker reports its node.")
    node_ttl_s: float = Field(5.0, gt=0, description="A node report expires after this long without a heartbeat.")
    claim_idle_ms: int = Field(
        15_000, ge=100, description="Invocations pending this long on a dead consumer are reclaimed."
    )
    container_factory: Literal["process", "docker"] = Field("process", description="How runtimes are started.")
    runtime_image: str = Field("faas-llm/action-runtime:latest", description="Image of the Docker factory.")
    placement_policy: str = Field("locality", description="Placement policy name (see faas_llm.placement).")
    invoker_metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port of the invoker (0: off).")
    runtime_start_timeout_s: float = Field(120.0, gt=0, description="Longest a new runtime may take to listen.")

    # --- celery --------------------------------------------------------------------
    celery_visibility_timeout_s: int = Field(3600, ge=10, description="Broker visibility timeout (> longest task).")
    celery_restore_interval_s: float = Field(
        5.0, gt=0, description="How often unacked tasks of dead workers are restored."
    )
    celery_pool: Literal["solo", "prefork", "threads"] = Field("prefork", description="Celery worker pool.")
    celery_concurrency: int = Field(1, ge=1, le=64, description="Celery worker processes/threads per node.")
    celery_tick_s: float = Field(10.0, gt=0, description="How often a worker runs the rescuer and prefetch policy.")
    celery_rescue_after_s: float = Field(
        30.0, gt=0, description="A node whose report stays absent this long is dead: its queue is re-routed."
    )
    prefetch_window_s: int = Field(900, ge=60, description="Invocation history the prefetch policy looks at.")
    prefetch_max_replicas: int = Field(3, ge=0, le=1024, description="Most nodes the policy keeps one model on.")
    migration_gap_tokens: int = Field(
        20, ge=0, description="Live migration hands over once the destination is within this many tokens."
    )
    migration_placement: bool = Field(
        True, description="Migrate a running inference off a full node when a waiting cold start begins sooner so."
    )
    migration_cost_a_s: float = Field(
        0.0005, ge=0, description="Migration resume cost per token recomputed at the destination (s, a in a*n+b)."
    )
    migration_cost_b_s: float = Field(0.5, ge=0, description="Fixed migration cost (s, b in a*n+b): hand-off, resume.")

    # --- client (the faas-llm CLI and faas_llm.client) ---------------------------------
    apihost: str = Field("", description="Gateway URL the CLI talks to (empty: the properties file, else the gateway).")
    auth: str = Field("", description="API key uuid:key of the CLI (empty: the properties file).")
    properties_file: Path = Field(
        default_factory=lambda: Path.home() / ".faas-llm" / "props",
        description="The CLI's properties file (like ~/.wskprops): APIHOST, AUTH, NAMESPACE, REDIS_URL.",
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("registry_url")
    @classmethod
    def _check_registry_url(cls, value: str) -> str:
        if value and not value.startswith(("file://", "s3://")):
            raise ValueError("must start with file:// or s3://")
        return value

    # --- derived paths (a function of the fields, never stored twice) ---------------
    @property
    def node_dir(self) -> Path:
        return self.data_dir / self.node_id

    @property
    def cache_socket_path(self) -> Path:
        return self.cache_socket or self.node_dir / "agent.sock"

    @property
    def ssd_path(self) -> Path:
        return self.ssd_dir or self.node_dir / "ssd"

    @property
    def registry(self) -> str:
        return self.registry_url or f"file://{self.data_dir / 'registry'}"

    @property
    def gateway_metrics_path(self) -> Path:
        return self.gateway_metrics_dir or self.data_dir / "gateway-metrics" / str(self.gateway_port)

    def prometheus_env(self) -> dict[str, str]:
        """What prometheus_client reads from the environment, at import, to count in files shared by
        processes (set by the gateway's gunicorn master before any worker imports it)."""
        return {"PROMETHEUS_MULTIPROC_DIR": str(self.gateway_metrics_path)}

    # --- construction --------------------------------------------------------------
    @classmethod
    def env_names(cls) -> dict[str, tuple[str, ...]]:
        """Field name -> the environment variables that set it, in priority order."""
        names: dict[str, tuple[str, ...]] = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            alias = extra.get("env")
            names[name] = (ENV_PREFIX + name.upper(),) + ((str(alias),) if alias else ())
        return names

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default: the process environment); overrides win."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        source: dict[str, str] = {}
        for field, names in cls.env_names().items():
            for var in names:
                if var in env and env[var] != "":
                    raw[field] = env[var]
                    source[field] = var
                    break
        unknown = sorted(
            k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in cls.model_fields
        )
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        raw.update(overrides)
        try:
            return cls(**raw)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else "?"
                var = source.get(field, field)
                problems.append(f"{var}={raw.get(field)!r}: {err['msg']}")
            raise ConfigError("invalid setting(s): " + "; ".join(problems)) from None

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out: dict[str, str] = {}
        for field, names in self.env_names().items():
            value = getattr(self, field)
            if value is None:
                continue
            out[names[0]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def child_environ(settings: Settings) -> dict[str, str]:
    """The environment of a child process: this one's, minus its FAAS_LLM_*, plus ``settings``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**base, **settings.as_env()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings.from_env()
