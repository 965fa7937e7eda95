"""The model registry's contract: named, versioned, immutable checkpoint directories.

A registry holds converted checkpoints for the whole cluster (the remote tier). A model
has a name (``name`` or ``org/name``, see :func:`faas_llm.types.check_model_name`) and
versions 1, 2, 3...; a push never changes an existing version, it adds the next one.

Atomicity, in every backend: a version becomes visible only when its *manifest*
(``versions/<NNNNNN>.json``) is created, after all its files are stored under a
private data prefix, and a manifest is created only if no manifest of that number
exists (``O_EXCL``-style create), so two concurrent pushes of one name get two
versions and a reader never sees a half-written model. A delete removes the
manifests first, so a model disappears at once, then its data.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from faas_llm.errors import NotFoundError, RegistryError, RequestError
from faas_llm.types import check_model_name

Progress = Callable[[int], None]
"""Called with a number of bytes just transferred."""

VERSION_RE = re.compile(r"^(\d{6})\.json$")
MAX_PUSH_ATTEMPTS = 64


def validate_name(name: str) -> str:
    """A registry model name, or RequestError (``..``, slashes beyond ``org/name``, odd characters)."""
    try:
        return check_model_name(name)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def name_parts(name: str) -> tuple[str, str]:
    """``org/name`` -> (org, name); a bare ``name`` -> ("_", name). ``_`` is never a valid org,
    so the two forms can never collide on disk or in a bucket."""
    validate_name(name)
    org, _, base = name.rpartition("/")
    return (org or "_", base)


def parts_name(org: str, base: str) -> str:
    return base if org == "_" else f"{org}/{base}"


def version_file(version: int) -> str:
    return f"{version:06d}.json"


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    size: int = Field(ge=0)


class ModelVersion(BaseModel):
    """The manifest of one stored version: what a reader needs to fetch it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=1)
    data: str = Field(min_length=1, description="private data prefix (a directory / key prefix) of this version")
    files: tuple[ManifestFile, ...]
    created_ms: int = Field(default_factory=lambda: int(time.time() * 1000))

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def key(self) -> str:
        """``name@version``: the identity of a checkpoint in every cache tier."""
        return f"{self.name}@{self.version}"


def list_files(src: Path) -> list[ManifestFile]:
    """Every regular file under ``src`` (relative POSIX paths, sorted), refusing links and odd names."""
    if not src.is_dir():
        raise RequestError(f"{src} is not a directory")
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_symlink():
            raise RequestError(f"{path}: symbolic links are not pushed")
        if path.is_file():
            files.append(ManifestFile(path=check_relpath(rel), size=path.stat().st_size))
    if not files:
        raise RequestError(f"{src} has no files to push")
    return files


def check_relpath(rel: str) -> str:
    """A file path inside a version: relative, no ``..``, no empty parts (manifests are data too)."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
        raise RegistryError(f"invalid file path {rel!r} in a model version")
    return rel


class Registry(ABC):
    """A registry backend. Implementations: :class:`~faas_llm.registry.local.FileRegistry`,
    :class:`~faas_llm.registry.s3.S3Registry`; build one with :func:`faas_llm.registry.open_registry`."""

    url: str

    @abstractmethod
    def versions(self, name: str) -> list[ModelVersion]:
        """Committed versions of ``name``, oldest first (empty if none)."""

    @abstractmethod
    def names(self) -> list[str]:
        """Names that have at least one committed version, sorted."""

    @abstractmethod
    def _store_files(self, src: Path, org: str, base: str, files: list[ManifestFile], progress: Progress | None) -> str:
        """Store the files under a fresh private data prefix; return the prefix."""

    @abstractmethod
    def _create_manifest(self, org: str, base: str, manifest: ModelVersion) -> bool:
        """Create manifest ``version`` if absent (atomically); False if that version exists."""

    @abstractmethod
    def _remove_version(self, org: str, base: str, manifest: ModelVersion) -> None:
        """Remove a version's manifest, then its data."""

    @abstractmethod
    def fetch(self, version: ModelVersion, dest: Path, progress: Progress | None = None) -> None:
        """Copy a version's files into ``dest`` (an existing, empty directory)."""

    def local_dir(self, version: ModelVersion) -> Path | None:
        """The directory holding ``version``'s files when this registry is a file system this process
        can read (read them in place, never write there); ``None`` when they must be fetched."""
        return None

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The manifest of ``name`` at ``version`` (default: the latest); NotFoundError if absent."""
        validate_name(name)
        found = self.versions(name)
        if version is not None:
            found = [v for v in found if v.version == version]
        if not found:
            what = f"{name} version {version}" if version is not None else name
            raise NotFoundError(f"no model {what} in the registry {self.url}")
        return found[-1]

    def list_models(self) -> list[ModelVersion]:
        """The latest version of every model."""
        out = []
        for name in self.names():
            found = self.versions(name)
            if found:
                out.append(found[-1])
        return out

    def push(self, src: Path, name: str, progress: Progress | None = None) -> ModelVersion:
        """Store directory ``src`` as the next version of ``name`` (atomically)."""
        org, base = name_parts(name)
        files = list_files(src)
        data = self._store_files(src, org, base, files, progress)
        existing = self.versions(name)
        candidate = (existing[-1].version + 1) if existing else 1
        for _ in range(MAX_PUSH_ATTEMPTS):
            manifest = ModelVersion(name=name, version=candidate, data=data, files=tuple(files))
            if self._create_manifest(org, base, manifest):
                return manifest
            candidate += 1  # a concurrent push took this number
        raise RegistryError(f"could not commit a new version of {name} after {MAX_PUSH_ATTEMPTS} attempts")

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Delete every version of ``name`` (or one); returns the deleted version numbers."""
        org, base = name_parts(name)
        found = self.versions(name)
        if version is not None:
            found = [v for v in found if v.version == version]
        if not found:
            raise NotFoundError(f"no model {name}{'' if version is None else f' version {version}'} "
                                f"in the registry {self.url}")
        for manifest in found:
            self._remove_version(org, base, manifest)
        return [m.version for m in found]
