"""The model registry (the remote tier): named, versioned checkpoints for the whole cluster.

``open_registry(settings)`` (or a URL) returns a :class:`Registry`:
``file:///shared/dir`` -> :class:`FileRegistry`, ``s3://bucket/prefix`` ->
:class:`S3Registry` (endpoint from ``settings.s3_endpoint_url``). See
:mod:`faas_llm.registry.base` for the atomicity contract.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from faas_llm.errors import ConfigError
from faas_llm.registry.base import ManifestFile, ModelVersion, Progress, Registry, name_parts, validate_name
from faas_llm.registry.local import FileRegistry
from faas_llm.settings import Settings

__all__ = [
    "FileRegistry",
    "ManifestFile",
    "ModelVersion",
    "Progress",
    "Registry",
    "S3Registry",
    "name_parts",
    "open_registry",
    "validate_name",
]


def open_registry(settings: Settings, url: str | None = None) -> Registry:
    """The registry at ``url`` (default: ``settings.registry``)."""
    url = url or settings.registry
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"registry {url!r}: a file:// URL takes an absolute path (file:///dir)")
        path = Path(unquote(parsed.path))
        if not path.is_absolute():
            raise ConfigError(f"registry {url!r}: the path must be absolute")
        return FileRegistry(path)
    if parsed.scheme == "s3":
        from faas_llm.registry.s3 import S3Registry

        return S3Registry(parsed.netloc, parsed.path, settings.s3_endpoint_url)
    raise ConfigError(f"registry {url!r}: unsupported scheme (use file:// or s3://)")


def __getattr__(name: str) -> object:
    if name == "S3Registry":  # boto3 is imported only when an S3 registry is used
        from faas_llm.registry.s3 import S3Registry

        return S3Registry
    raise AttributeError(name)
