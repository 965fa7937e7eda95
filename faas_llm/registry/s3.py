"""The ``s3://bucket/prefix`` registry (boto3; any S3-compatible endpoint via ``s3_endpoint_url``).

Keys, mirroring the file registry::

    <prefix>/models/<org>/<name>/data/<uuid>/<file>          the objects of one push
    <prefix>/models/<org>/<name>/versions/000001.json        manifest; committed with If-None-Match: *

The manifest is created with a conditional put (``If-None-Match: *``), so of two pushes
racing for one version number exactly one wins and the other takes the next number.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

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


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Registry(Registry):
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str = "", client: Any = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        if not bucket:
            raise RegistryError("an s3:// registry URL needs a bucket (s3://bucket/prefix)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None)
        self.transfer = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024,
                                       max_concurrency=4)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _model_key(self, org: str, base: str) -> str:
        return self._key("models", org, base)

    def _list(self, prefix: str, delimiter: str = "") -> tuple[list[str], list[str]]:
        """(object keys, common prefixes) under ``prefix``, all pages."""
        keys: list[str] = []
        prefixes: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
                prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        except Exception as exc:
            raise RegistryError(f"cannot list {self.url}: {exc}") from exc
        return keys, prefixes

    def _get_manifest(self, key: str) -> ModelVersion | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if _client_error_code(exc) in ("NoSuchKey", "404"):
                return None  # deleted between list and get
            raise RegistryError(f"cannot read {key} from {self.url}: {exc}") from exc
        try:
            manifest = ModelVersion.model_validate_json(body)
        except ValueError as exc:
            raise RegistryError(f"invalid manifest {key} in {self.url}: {exc}") from None
        check_relpath(manifest.data)
        for f in manifest.files:
            check_relpath(f.path)
        return manifest

    def versions(self, name: str) -> list[ModelVersion]:
        org, base = name_parts(name)
        vprefix = self._model_key(org, base) + "/versions/"
        keys, _ = self._list(vprefix)
        out = []
        for key in sorted(keys):
            if VERSION_RE.match(key[len(vprefix):]):
                manifest = self._get_manifest(key)
                if manifest is not None:
                    out.append(manifest)
        return out

    def names(self) -> list[str]:
        root = self._key("models") + "/"
        keys, _ = self._list(root)
        found = set()
        for key in keys:
            parts = key[len(root):].split("/")
            if len(parts) == 4 and parts[2] == "versions" and VERSION_RE.match(parts[3]):
                found.add(parts_name(parts[0], parts[1]))
        return sorted(found)

    def _store_files(self, src: Path, org: str, base: str, files: list[ManifestFile], progress: Progress | None) -> str:
        data = f"data/{uuid.uuid4().hex}"
        stored: list[str] = []
        try:
            for f in files:
                key = f"{self._model_key(org, base)}/{data}/{f.path}"
                self.client.upload_file(str(src / f.path), self.bucket, key, Config=self.transfer, Callback=progress)
                stored.append(key)
        except Exception as exc:
            self._delete_keys(stored)
            raise RegistryError(f"cannot upload to {self.url}: {exc}") from exc
        return data

    def _create_manifest(self, org: str, base: str, manifest: ModelVersion) -> bool:
        key = f"{self._model_key(org, base)}/versions/{version_file(manifest.version)}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=manifest.model_dump_json().encode(),
                                   ContentType="application/json", IfNoneMatch="*")
        except Exception as exc:
            if _client_error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise RegistryError(f"cannot commit {manifest.key} to {self.url}: {exc}") from exc
        return True

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise RegistryError(f"cannot delete objects from {self.url}: {exc}") from exc

    def _remove_version(self, org: str, base: str, manifest: ModelVersion) -> None:
        mkey = self._model_key(org, base)
        self._delete_keys([f"{mkey}/versions/{version_file(manifest.version)}"])
        data_keys, _ = self._list(f"{mkey}/{manifest.data}/")
        self._delete_keys(data_keys)

    def fetch(self, version: ModelVersion, dest: Path, progress: Progress | None = None) -> None:
        org, base = name_parts(version.name)
        prefix = f"{self._model_key(org, base)}/{version.data}"
        for f in version.files:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(self.bucket, f"{prefix}/{f.path}", str(target), Config=self.transfer,
                                          Callback=progress)
            except Exception as exc:
                raise RegistryError(f"cannot fetch {version.key} ({f.path}) from {self.url}: {exc}") from exc
