"""The CLI's properties file, like OpenWhisk's ``~/.wskprops``: ``KEY=VALUE`` lines.

Known keys: ``APIHOST`` (gateway URL), ``AUTH`` (``uuid:key``), ``NAMESPACE`` and
``REDIS_URL`` (faas-llm's own, for ``cluster status``). Unknown keys are kept as they
are, so a file shared with other tools loses nothing. The path is
``Settings.properties_file``; ``FAAS_LLM_APIHOST`` / ``FAAS_LLM_AUTH`` override the file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from faas_llm.errors import ConfigError
from faas_llm.settings import Settings

KNOWN_KEYS = ("APIHOST", "AUTH", "NAMESPACE", "REDIS_URL")


def read_properties(path: Path) -> dict[str, str]:
    """The file's ``KEY=VALUE`` pairs (``{}`` when it does not exist); ``#`` starts a comment line."""
    if not path.exists():
        return {}
    props: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        props[key.strip().upper()] = value.strip()
    return props


def write_properties(path: Path, updates: dict[str, str | None]) -> dict[str, str]:
    """Set (or with ``None`` remove) keys, keeping the rest; written atomically, mode 0600 (it holds a key)."""
    props = read_properties(path)
    for key, value in updates.items():
        if value is None:
            props.pop(key.upper(), None)
        else:
            if "\n" in value:
                raise ConfigError(f"{key} must be one line")
            props[key.upper()] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".props-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in props.items()))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return props


@dataclass(frozen=True)
class ClientConfig:
    """Where and as whom the client talks: settings (environment) over the file over defaults."""

    apihost: str
    auth: str
    namespace: str
    redis_url: str

    @classmethod
    def resolve(cls, settings: Settings) -> ClientConfig:
        props = read_properties(settings.properties_file)
        apihost = settings.apihost or props.get("APIHOST") or f"http://{settings.gateway_host}:{settings.gateway_port}"
        if "://" not in apihost:
            apihost = "https://" + apihost  # OpenWhisk clients treat a bare host as https
        redis_explicit = "redis_url" in settings.model_fields_set  # set by the environment (or a caller)
        return cls(
            apihost=apihost.rstrip("/"),
            auth=settings.auth or props.get("AUTH", ""),
            namespace=props.get("NAMESPACE") or "_",
            redis_url=settings.redis_url if redis_explicit else props.get("REDIS_URL") or settings.redis_url,
        )
