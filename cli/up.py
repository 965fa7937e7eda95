"""``faas-llm up`` / ``faas-llm down``: a complete one-node cluster on this machine in one command.

``up`` runs in the foreground: an embedded Redis (or ``--redis-url``), then every service the
package has (see :data:`cli.supervisor.SERVICES`), a guest namespace and key written to the
properties file, and a banner saying how to try it. Ctrl-C or SIGTERM stops everything (process
groups, no orphans). ``--detach`` runs the same in the background; ``faas-llm down`` stops it,
found through the state file ``<data_dir>/up.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
import psutil

from cli._client import load_settings
from cli.supervisor import RestartBudget, Supervisor, available_services, kill_all, process_alive
from faas_llm.errors import ConfigError
from faas_llm.properties import write_properties
from faas_llm.redis_server import RedisServer, free_port
from faas_llm.settings import Settings

STATE_FILE = "up.json"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"512MiB"``, ``"2G"``, ``"1.5GB"``, ``"1048576"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 512MiB, 2GiB, 1GB, 1048576)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        return value if isinstance(value, int) else parse_size(str(value))


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --- the state file ---------------------------------------------------------------------------


def state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


def read_state(settings: Settings) -> dict[str, Any] | None:
    """The running cluster's state, or None (no file, or its process is gone: the file is removed)."""
    path = state_path(settings)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        path.unlink(missing_ok=True)
        return None
    if not _same_process(int(state.get("pid", 0)), float(state.get("created", 0))):
        path.unlink(missing_ok=True)
        return None
    return dict(state)


def _same_process(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return process_alive(pid) and abs(proc.create_time() - created) < 0.01
    except psutil.Error:
        return False


def write_state(settings: Settings, state: dict[str, Any]) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "created": psutil.Process().create_time()}


# --- stopping on signals ------------------------------------------------------------------------


class StopRequested(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM so every ``finally`` runs (a BaseException, as KeyboardInterrupt)."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # From now on a second signal must not interrupt the orderly stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StopRequested(signal.Signals(signum).name)


def _start_redis(settings: Settings) -> RedisServer:
    # Block SIGINT while redis-server is forked: it inherits the mask, so a Ctrl-C in the terminal
    # (sent to the whole foreground group) does not kill Redis before the services have stopped;
    # we stop it last with SIGTERM.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return RedisServer(port=free_port(), data_dir=settings.data_dir / "redis", appendonly=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


GUEST = "guest"


def provision_guest(settings: Settings) -> str:
    """A key of the ``guest`` namespace (created if missing): the properties file's key when it is
    still valid for guest in this Redis (a restart over the same data dir keeps it), else a new one."""
    import redis

    from faas_llm.auth import AuthStore, Credentials
    from faas_llm.errors import AuthError
    from faas_llm.keys import Keys
    from faas_llm.properties import read_properties

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        store = AuthStore(client, Keys(settings.key_prefix))
        if not store.namespace_exists(GUEST):
            store.create_namespace(GUEST)
        current = read_properties(settings.properties_file).get("AUTH", "")
        if current:
            try:
                if store.verify(Credentials.parse(current)).namespace == GUEST:
                    return current
            except AuthError:
                pass
        return str(store.create_key(GUEST))
    finally:
        client.close()


def _banner(settings: Settings, apihost: str, key: str, started: list[str], missing: list[str]) -> str:
    lines = [
        f"faas-llm is up: {apihost}  (OpenWhisk API {apihost}/api/v1, OpenAI API {apihost}/v1)",
        f"  services   {', '.join(started) or '(none)'}",
    ]
    if missing:
        lines.append(f"  not in this package yet: {', '.join(missing)}")
    lines += [
        f"  redis      {settings.redis_url}",
        f"  data       {settings.data_dir}  (logs in {settings.data_dir / 'logs'})",
        f"  key        namespace guest, {key.partition(':')[0]}:... written to {settings.properties_file}",
        "try:",
        "  faas-llm model make-demo --size tiny /tmp/tiny-llama && faas-llm model push /tmp/tiny-llama --name tiny",
        "  faas-llm action create hello --model tiny",
        "  faas-llm action invoke hello -p prompt 'The serverless platform' --result",
        "  faas-llm action invoke hello -p prompt 'The serverless platform' -p max_tokens 32 --stream",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def run_foreground(settings: Settings, redis_url: str | None, ready_timeout: float) -> None:
    running = read_state(settings)
    if running:
        raise ConfigError(f"a cluster is already running from {settings.data_dir} (pid {running['pid']}, "
                          f"{running.get('apihost')}); stop it with `faas-llm down`")
    if not port_free(settings.gateway_host, settings.gateway_port):
        raise ConfigError(f"port {settings.gateway_port} on {settings.gateway_host} is already in use "
                          "(another `faas-llm up`?); stop that or choose another with --port")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    have, lack = available_services()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    redis: RedisServer | None = None
    supervisor: Supervisor | None = None
    apihost = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        write_state(settings, {**_me(), "ready": False, "apihost": apihost})
        if redis_url is None:
            redis = _start_redis(settings)
            redis_url = redis.url
        settings = Settings(**{**settings.model_dump(), "redis_url": redis_url})
        supervisor = Supervisor(settings, have)
        supervisor.start(ready_timeout, on_ready=lambda c: click.echo(f"  {c.spec.name} ready (pid {c.pid})"))
        key = provision_guest(settings)
        write_properties(settings.properties_file, {"APIHOST": apihost, "AUTH": key, "REDIS_URL": redis_url})
        children = {c.spec.name: [c.pid, psutil.Process(c.pid).create_time()] for c in supervisor.children}
        if redis is not None and redis.proc is not None:
            children["redis"] = [redis.proc.pid, psutil.Process(redis.proc.pid).create_time()]
        write_state(settings, {**_me(), "ready": True, "apihost": apihost, "redis_url": redis_url,
                               "children": children})
        click.echo(_banner(settings, apihost, key, [s.name for s in have], [s.entry_point for s in lack]))
        budget = RestartBudget()
        while True:
            # a service that dies (a crash, a kill -9) is started again; one in a crash loop stops everything
            for child in supervisor.dead():
                if not budget.allow(child.spec.name, time.monotonic()):
                    raise ConfigError(f"{child.spec.name} (exit {child.proc.returncode}) keeps stopping on its own; "
                                      f"its log ends with:\n{child.log_tail()}")
                fresh = supervisor.restart(child)
                click.echo(f"  {child.spec.name} exited with {child.proc.returncode}: restarted (pid {fresh.pid})")
                try:
                    children[child.spec.name] = [fresh.pid, psutil.Process(fresh.pid).create_time()]
                except psutil.Error:
                    continue  # died at once: the next pass sees it
                write_state(settings, {**_me(), "ready": True, "apihost": apihost, "redis_url": redis_url,
                                       "children": children})
            time.sleep(0.5)
    except StopRequested as stop:
        click.echo(f"\n{stop.args[0] if stop.args else 'signal'}: stopping ...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.stop()
        if redis is not None:
            redis.stop()
        state_path(settings).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("stopped.")


def run_detached(settings: Settings, argv: list[str], ready_timeout: float) -> None:
    running = read_state(settings)
    if running:
        raise ConfigError(f"a cluster is already running from {settings.data_dir} (pid {running['pid']}); "
                          "stop it with `faas-llm down`")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "up", *argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + ready_timeout + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"`faas-llm up` exited with {proc.returncode}:\n"
                              f"{log_path.read_text(errors='replace')[-3000:]}")
        state = read_state(settings)
        if state and state.get("ready") and state.get("pid") == proc.pid:
            click.echo(f"faas-llm is up in the background (pid {proc.pid}): {state['apihost']}; "
                       f"log {log_path}; stop it with `faas-llm down`")
            return
        time.sleep(0.2)
    proc.terminate()
    raise ConfigError(f"`faas-llm up` was not ready in time; see {log_path}")


@click.command("up")
@click.option("--port", type=click.IntRange(1, 65535), help="Gateway port (default: FAAS_LLM_GATEWAY_PORT, 3233).")
@click.option("--host", help="Gateway bind address (default: FAAS_LLM_GATEWAY_HOST, 127.0.0.1).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Local state: Redis, caches, logs (default: FAAS_LLM_DATA_DIR, ~/.faas-llm).")
@click.option("--dram", type=_Size(), help="DRAM cache capacity, e.g. 2GiB.")
@click.option("--ssd", type=_Size(), help="SSD cache capacity, e.g. 20GiB.")
@click.option("--redis-url", help="Use this Redis instead of starting one.")
@click.option("--detach", "-d", is_flag=True, help="Run in the background; stop with `faas-llm down`.")
@click.option("--ready-timeout", type=click.FloatRange(1), default=180.0, show_default=True,
              help="Seconds to wait for every service to be ready.")
def up(port: int | None, host: str | None, data_dir: Path | None, dram: int | None, ssd: int | None,
       redis_url: str | None, detach: bool, ready_timeout: float) -> None:
    """Start a one-node cluster here: Redis, gateway, invoker, cache agent, worker (Ctrl-C stops it)."""
    settings = load_settings(gateway_port=port, gateway_host=host, data_dir=data_dir and data_dir.resolve(),
                             dram_capacity_bytes=dram, ssd_capacity_bytes=ssd, redis_url=redis_url)
    if detach:
        argv = ["--data-dir", str(settings.data_dir), "--ready-timeout", str(ready_timeout)]
        for flag, value in (("--port", port), ("--host", host), ("--dram", dram), ("--ssd", ssd),
                            ("--redis-url", redis_url)):
            if value is not None:
                argv += [flag, str(value)]
        run_detached(settings, argv, ready_timeout)
    else:
        run_foreground(settings, redis_url, ready_timeout)


@click.command("down")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The data dir `faas-llm up` ran with (default: FAAS_LLM_DATA_DIR, ~/.faas-llm).")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds to wait for an orderly stop before killing.")
def down(data_dir: Path | None, timeout: float) -> None:
    """Stop a cluster started with `faas-llm up --detach` (or running in another terminal)."""
    settings = load_settings(data_dir=data_dir and data_dir.resolve())
    state = read_state(settings)
    if state is None:
        raise ConfigError(f"no `faas-llm up` is running from {settings.data_dir}")
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = {int(p): float(c) for p, c in (state.get("children") or {}).values()}
    if process_alive(pid):
        click.echo(f"`faas-llm up` (pid {pid}) did not stop in {timeout:g} s: killing it and its services", err=True)
        kill_all({pid: float(state["created"])}, grace_s=0)
    kill_all(children, grace_s=5)  # normally gone already; never leave one behind
    state_path(settings).unlink(missing_ok=True)
    click.echo(f"stopped faas-llm (pid {pid}).")
