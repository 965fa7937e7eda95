"""The Docker factory: action runtimes as containers, through the Docker Engine API (``docker`` package).

:func:`container_spec` (pure) builds the ``containers.run`` arguments: the runtime image, the
invoker's settings as environment (``runtime_host`` 0.0.0.0 and the image's port inside), the
port published on the invoker's ``runtime_host`` at a free port, the data dir mounted at the
same path (the registry and the cache agent's socket live there), labels that name the node
and the container, and the memory limit.
"""

from __future__ import annotations

import threading
from typing import Any

from faas_llm.errors import InternalError
from faas_llm.redis_server import free_port
from faas_llm.settings import Settings
from invoker.factory import ContainerFactory, RuntimeHandle, wait_ready
from invoker.logs import LogCollector

LABEL = "faas-llm.container"
INSIDE_PORT = 8080


def container_spec(
    settings: Settings, container_id: str, host_port: int, memory_mb: int | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``docker.containers.run`` for one runtime."""
    inside = settings.model_copy(update={"runtime_host": "0.0.0.0", "runtime_port": INSIDE_PORT})
    env = inside.as_env()
    env["PORT"] = str(INSIDE_PORT)
    data_dir = str(settings.data_dir)
    return {
        "image": settings.runtime_image,
        "name": f"faas-llm-{container_id}",
        "detach": True,
        "environment": env,
        "ports": {f"{INSIDE_PORT}/tcp": (settings.runtime_host, host_port)},
        "volumes": {data_dir: {"bind": data_dir, "mode": "rw"}},
        "labels": {LABEL: container_id, "faas-llm.node": settings.node_id},
        "mem_limit": f"{memory_mb or settings.action_memory_mb}m",
        "network_mode": "bridge",
        "init": True,
        "stop_signal": "SIGTERM",
    }


class DockerFactory(ContainerFactory):
    name = "docker"

    def __init__(self, settings: Settings, client: Any = None) -> None:
        import docker

        self.settings = settings
        self.client = client or docker.from_env()  # type: ignore[attr-defined]

    def start(self, container_id: str) -> RuntimeHandle:
        import docker.errors

        port = free_port(self.settings.runtime_host)
        spec = container_spec(self.settings, container_id, port)
        try:
            container = self.client.containers.run(**spec)
        except docker.errors.DockerException as exc:
            raise InternalError(f"docker could not start {spec['image']}: {exc}") from None
        logs = LogCollector(self.settings.max_log_bytes)
        self._follow_logs(container, logs)
        handle = RuntimeHandle(container_id, f"http://{self.settings.runtime_host}:{port}", logs, container)
        try:
            wait_ready(handle.url, lambda: self.alive(handle), self.settings.runtime_start_timeout_s)
        except InternalError:
            self.remove(handle, graceful=False)
            raise
        return handle

    @staticmethod
    def _follow_logs(container: Any, logs: LogCollector) -> None:
        def pump(stream: str, **which: bool) -> None:
            pending = b""
            try:
                for chunk in container.logs(stream=True, follow=True, **which):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        logs.feed(stream, line.decode("utf-8", "replace"))
            except Exception:  # the container went away
                pass
            finally:
                logs.eof(stream)

        for stream, which in (("stdout", {"stdout": True, "stderr": False}), ("stderr", {"stdout": False,
                                                                                       "stderr": True})):
            threading.Thread(target=pump, args=(stream,), kwargs=which, daemon=True, name=f"docker-{stream}").start()

    def alive(self, handle: RuntimeHandle) -> bool:
        import docker.errors

        try:
            handle.native.reload()
        except docker.errors.DockerException:
            return False
        return bool(handle.native.status in ("created", "running"))

    def remove(self, handle: RuntimeHandle, graceful: bool = True) -> None:
        import docker.errors

        try:
            if graceful:
                handle.native.stop(timeout=int(self.settings.runtime_drain_s))
            handle.native.remove(force=True)
        except docker.errors.DockerException:
            pass

    def close(self) -> None:
        self.client.close()
