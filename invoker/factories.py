"""The container factory a node uses, by name (``settings.container_factory``): a registry of the kinds."""

from __future__ import annotations

from faas_llm.errors import ConfigError
from faas_llm.settings import Settings
from invoker.docker_factory import DockerFactory
from invoker.factory import ContainerFactory, ProcessFactory

FACTORIES: dict[str, type[ContainerFactory]] = {"process": ProcessFactory, "docker": DockerFactory}


def make_factory(settings: Settings) -> ContainerFactory:
    """The factory ``settings.container_factory`` names."""
    try:
        kind = FACTORIES[settings.container_factory]
    except KeyError:
        raise ConfigError(f"unknown container factory {settings.container_factory!r}") from None
    return kind(settings)  # type: ignore[call-arg]
