"""Where a runtime's model comes from: one small interface, several sources.

``/init`` names a model (:class:`ModelSpec`: a registry name and/or a local checkpoint path);
:func:`load_model` picks the first :class:`ModelSource` that can load it and returns a
:class:`LoadedModel` (model, tokenizer, the tier it came from, seconds). Sources, tried in order:

- ``faas-llm``: a faas-llm checkpoint directory (``index.json`` + partitions), through
  :mod:`faas_llm.checkpoint`'s loader (used when that package provides ``load_model``);
- ``hf``: a Hugging Face model directory, through ``from_pretrained(local_files_only=True)``;
- a registry name goes to the node's cache agent first (:class:`~faas_llm.cache_client.CacheClient`:
  zero-copy from its DRAM pool, tier ``dram`` / ``ssd`` / ``registry`` as the agent reports; with the
  agent down, the newest SSD copy, tier ``local``); with no agent and no SSD copy (Knative), the
  registry's own API (:mod:`faas_llm.registry`) resolves the latest version, read in place from a
  ``file://`` registry or fetched once from an object store into ``<node dir>/registry-fetch``, and
  loaded with the directory sources above (tier ``registry``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from action_runtime.device import on_device, serving_device
from faas_llm.errors import CacheAgentError, CheckpointError, InitError, NotFoundError, RegistryError
from faas_llm.settings import Settings
from faas_llm.types import LoadTier, ModelName

log = logging.getLogger(__name__)

CHECKPOINT_INDEX = "index.json"
HF_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


class ModelSpec(BaseModel):
    """The model an action runs: ``model`` (registry name) and/or ``checkpoint`` (local directory).

    With both, the checkpoint path is loaded and ``model`` is the name results report.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: ModelName | None = None
    checkpoint: StrictStr | None = Field(None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _some_model(self) -> ModelSpec:
        if self.model is None and self.checkpoint is None:
            raise ValueError("name the model: give value.model (a registry name) or value.checkpoint (a directory)")
        return self

    @property
    def display_name(self) -> str:
        return self.model or Path(self.checkpoint or "").name


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    tier: LoadTier
    load_s: float
    source: str
    detail: dict[str, Any] = field(default_factory=dict)
    handle: Any = None
    """What keeps the weights valid (the cache-agent client that holds and heartbeats the lease), if anything."""

    def close(self) -> None:
        """Give back what keeps the weights valid (release the lease, stop its heartbeat); the model
        must not run after this."""
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()


class ModelSource(ABC):
    """One way of loading a model. ``tier`` is where the bytes come from when it loads."""

    name: str

    @abstractmethod
    def can_load(self, path: Path) -> bool:
        """Whether the directory ``path`` holds a model this source reads."""

    @abstractmethod
    def load(self, path: Path, settings: Settings) -> tuple[Any, dict[str, Any]]:
        """Load the model from ``path``: (the model in eval mode, details for the result)."""


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InitError(f"cannot load the tokenizer from {path}: {exc}") from None


class HFDirSource(ModelSource):
    """A Hugging Face model directory (``config.json`` and safetensors / bin weights)."""

    name = "hf"

    def can_load(self, path: Path) -> bool:
        return (path / "config.json").is_file() and any(any(path.glob(p)) for p in HF_WEIGHT_PATTERNS)

    def load(self, path: Path, settings: Settings) -> tuple[Any, dict[str, Any]]:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InitError(f"cannot load the model from {path}: {exc}") from None
        return on_device(model.eval(), serving_device(settings.runtime_device)), {}


class CheckpointSource(ModelSource):
    """A faas-llm checkpoint directory, read by :mod:`faas_llm.checkpoint`'s loader."""

    name = "faas-llm"

    @staticmethod
    def _loader() -> Any:
        try:
            from faas_llm import checkpoint
        except ImportError:
            return None
        return getattr(checkpoint, "load_model", None)

    def can_load(self, path: Path) -> bool:
        return (path / CHECKPOINT_INDEX).is_file() and self._loader() is not None

    def load(self, path: Path, settings: Settings) -> tuple[Any, dict[str, Any]]:
        loader = self._loader()
        if loader is None:
            raise CheckpointError("this build has no faas-llm checkpoint loader")
        model, stats = loader(path, settings=settings, device=serving_device(settings.runtime_device))
        detail = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) and not isinstance(stats, type) else {}
        return model.eval(), detail


def default_sources() -> list[ModelSource]:
    return [CheckpointSource(), HFDirSource()]


def registry_checkpoint(name: str, settings: Settings) -> Path:
    """A local directory with the latest version of registry model ``name``, found through the
    registry's API: its own directory in a ``file://`` registry, else a copy fetched once."""
    from faas_llm.registry import name_parts, open_registry

    registry = open_registry(settings)
    try:
        version = registry.resolve(name)
    except NotFoundError:
        raise RegistryError(f"model {name!r} is not in the registry {registry.url}") from None
    local = registry.local_dir(version)
    if local is not None:
        return local
    org, base = name_parts(name)
    dest = settings.node_dir / "registry-fetch" / org / base / f"{version.version:06d}"
    if not dest.is_dir():
        partial = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.partial")
        partial.mkdir(parents=True)
        try:
            registry.fetch(version, partial)
            partial.rename(dest)
        except OSError:
            if not dest.is_dir():  # else a concurrent fetch of the same version won the rename
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return dest


def resolve(spec: ModelSpec, settings: Settings) -> tuple[Path, LoadTier]:
    """The directory to load and the tier it counts as."""
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_dir():
            raise InitError(f"checkpoint {spec.checkpoint!r} is not a directory")
        return path, LoadTier.LOCAL
    return registry_checkpoint(str(spec.model), settings), LoadTier.REGISTRY


def load_from_cache_agent(name: str, settings: Settings) -> LoadedModel:
    """Load a registry model through the node's cache agent; :class:`CacheAgentError` when it cannot."""
    from faas_llm.cache_client import CacheClient

    started = time.perf_counter()
    client = CacheClient(settings)
    tokenizers: dict[Path, Any] = {}

    def tokenizer_early(meta_dir: Path) -> None:  # while the agent reads the weights (SSD / registry tier)
        tokenizers[meta_dir] = load_tokenizer(meta_dir)

    try:
        loaded = client.load_model(name, fallback=True, on_meta=tokenizer_early)
        meta_dir = Path(loaded.lease.reply.meta_dir) if loaded.lease is not None else loaded.path
        if meta_dir is None:
            raise CacheAgentError(f"the cache agent gave no directory with the tokenizer of {name}")
        tokenizer = tokenizers.get(meta_dir) or load_tokenizer(meta_dir)
    except BaseException:
        client.close()
        raise
    detail = {"lease": loaded.lease.lease_id} if loaded.lease is not None else {"path": str(loaded.path)}
    model = on_device(loaded.model.eval(), serving_device(settings.runtime_device))  # a GPU: one copy from the pool
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, tier=loaded.tier,
        load_s=time.perf_counter() - started, source="cache-agent", detail=detail, handle=client,
    )


def load_model(spec: ModelSpec, settings: Settings, sources: list[ModelSource] | None = None) -> LoadedModel:
    """Load the model ``spec`` names: through the cache agent for a registry name, else from a directory."""
    if spec.checkpoint is None and spec.model is not None:
        try:
            return load_from_cache_agent(spec.model, settings)
        except CacheAgentError as exc:
            log.info("cache agent path for %s unavailable (%s): reading the registry directly", spec.model,
                     exc.message)
    path, tier = resolve(spec, settings)
    for source in sources if sources is not None else default_sources():
        if source.can_load(path):
            started = time.perf_counter()
            model, detail = source.load(path, settings)
            tokenizer = load_tokenizer(path)
            return LoadedModel(
                model=model, tokenizer=tokenizer, name=spec.display_name, tier=tier,
                load_s=time.perf_counter() - started, source=source.name, detail=detail,
            )
    raise InitError(f"{path} holds no model this runtime can load (a Hugging Face or faas-llm checkpoint directory)")
