"""The ``file://`` registry: a directory shared by the nodes (NFS, a bind mount, a local disk).

Layout::

    <root>/models/<org>/<name>/data/<uuid>/...        the files of one push (immutable)
    <root>/models/<org>/<name>/versions/000001.json   manifest; its creation commits the version

A push copies into ``data/<uuid>.partial`` and renames it to ``data/<uuid>``; the
manifest is written to a temporary file and hard-linked to ``versions/NNNNNN.json``
(``link`` fails if the name exists: the O_EXCL commit). Bare names use org ``_``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from faas_llm.errors import RegistryError
from faas_llm.registry.base import (
    VERSION_RE,
    ManifestFile,
    ModelVersion,
    Progress,
    Registry,
    check_relpath,
    name_parts,
    parts_name,
    version_file,
)

COPY_CHUNK = 8 * 1024 * 1024


def copy_file(src: Path, dst: Path, progress: Progress | None) -> None:
    """Copy one file in large chunks, reporting progress, fsync'ing the result."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            chunk = fin.read(COPY_CHUNK)
            if not chunk:
                break
            fout.write(chunk)
            if progress is not None:
                progress(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())


class FileRegistry(Registry):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _model_dir(self, org: str, base: str) -> Path:
        return self.root / "models" / org / base

    def _read_manifest(self, path: Path) -> ModelVersion:
        try:
            manifest = ModelVersion.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"unreadable manifest {path}: {exc}") from None
        for f in manifest.files:
            check_relpath(f.path)
        check_relpath(manifest.data)
        return manifest

    def versions(self, name: str) -> list[ModelVersion]:
        org, base = name_parts(name)
        vdir = self._model_dir(org, base) / "versions"
        try:
            entries = sorted(e for e in os.listdir(vdir) if VERSION_RE.match(e))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            try:
                out.append(self._read_manifest(vdir / entry))
            except RegistryError:
                if (vdir / entry).exists():
                    raise
                # deleted between listdir and read: not a version any more
        return out

    def names(self) -> list[str]:
        models = self.root / "models"
        found = []
        if not models.is_dir():
            return []
        for org in sorted(os.listdir(models)):
            for base in sorted(os.listdir(models / org)):
                vdir = models / org / base / "versions"
                if vdir.is_dir() and any(VERSION_RE.match(e) for e in os.listdir(vdir)):
                    found.append(parts_name(org, base))
        return sorted(found)

    def _store_files(self, src: Path, org: str, base: str, files: list[ManifestFile], progress: Progress | None) -> str:
        data = f"data/{uuid.uuid4().hex}"
        final = self._model_dir(org, base) / data
        partial = final.with_name(final.name + ".partial")
        try:
            partial.mkdir(parents=True)
            for f in files:
                target = partial / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                copy_file(src / f.path, target, progress)
            partial.rename(final)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise RegistryError(f"cannot store files in {self.url}: {exc}") from exc
        return data

    def _create_manifest(self, org: str, base: str, manifest: ModelVersion) -> bool:
        vdir = self._model_dir(org, base) / "versions"
        vdir.mkdir(parents=True, exist_ok=True)
        tmp = vdir / f".{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(manifest.model_dump_json())
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, vdir / version_file(manifest.version))
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _remove_version(self, org: str, base: str, manifest: ModelVersion) -> None:
        mdir = self._model_dir(org, base)
        with contextlib.suppress(FileNotFoundError):
            (mdir / "versions" / version_file(manifest.version)).unlink()
        shutil.rmtree(mdir / manifest.data, ignore_errors=True)
        for empty in (mdir / "versions", mdir / "data", mdir, mdir.parent):
            with contextlib.suppress(OSError):
                empty.rmdir()  # only succeeds once nothing is left

    def local_dir(self, version: ModelVersion) -> Path:
        org, base = name_parts(version.name)
        return self._model_dir(org, base) / version.data

    def fetch(self, version: ModelVersion, dest: Path, progress: Progress | None = None) -> None:
        src = self.local_dir(version)
        try:
            for f in version.files:
                target = dest / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                copy_file(src / f.path, target, progress)
        except FileNotFoundError as exc:
            raise RegistryError(f"{version.key} vanished from the registry {self.url} during a fetch: {exc}") from exc
        except OSError as exc:
            raise RegistryError(f"cannot fetch {version.key} from {self.url}: {exc}") from exc
