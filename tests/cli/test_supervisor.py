"""The supervisor with real child processes: readiness, failure at start, and no orphans after stop,
including a grandchild that left the group (its own session) and one that ignores SIGTERM."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from cli.supervisor import SERVICES, ServiceSpec, Supervisor, available_services, module_exists
from faas_llm import probes
from faas_llm.errors import ConfigError
from faas_llm.settings import Settings

# A service that starts a grandchild in a session of its own (as a container factory might) and a
# grandchild in its own group that ignores SIGTERM, writes their pids, then serves forever.
SPAWNER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    out = sys.argv[1]
    a = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    b = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    with open(out + ".tmp", "w") as f:
        f.write(f"{a.pid} {b.pid}")
    os.replace(out + ".tmp", out)
    time.sleep(600)
""")


def _file_probe(path: Path) -> probes.Probe:
    return lambda settings: path.exists()


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    pids_file = tmp_path / "pids"
    spec = ServiceSpec("spawner", ("-c", SPAWNER, str(pids_file)), lambda: True, _file_probe(pids_file))
    sup = Supervisor(settings, [spec])
    ready: list[str] = []
    children = sup.start(timeout_s=60, on_ready=lambda c: ready.append(c.spec.name))
    assert ready == ["spawner"]
    grandchildren = [int(p) for p in pids_file.read_text().split()]
    everyone = [children[0].pid, *grandchildren]
    assert all(psutil.pid_exists(p) for p in everyone)
    assert sup.dead() == []  # also records descendants (one scan of the process list for all children)
    assert {p: children[0].seen.get(p) for p in grandchildren} == {
        p: psutil.Process(p).create_time() for p in grandchildren}
    sup.stop(grace_s=2)
    for pid in everyone:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert (tmp_path / "logs" / "spawner.log").exists()


def test_a_service_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    crash = ServiceSpec("crasher", ("-c", "import sys; print('boom: bad config'); sys.exit(3)"), lambda: True,
                        lambda s: False)
    never = ServiceSpec("sleeper", ("-c", "import time; time.sleep(600)"), lambda: True, lambda s: False)
    sup = Supervisor(settings, [never, crash])
    with pytest.raises(ConfigError, match=r"crasher exited with 3 while starting(.|\n)*boom: bad config"):
        sup.start(timeout_s=60)
    assert sup.children == []  # the sleeper was stopped too


def test_not_ready_in_time_stops_everything(tmp_path: Path) -> None:
    sup = Supervisor(Settings(data_dir=tmp_path),
                     [ServiceSpec("slow", ("-c", "import time; time.sleep(600)"), lambda: True, lambda s: False)])
    with pytest.raises(ConfigError, match=r"not ready within 0\.5 s: slow"):
        sup.start(timeout_s=0.5)
    assert sup.children == []


def test_service_table_is_data_and_availability_follows_the_package() -> None:
    have, lack = available_services()
    assert {s.name for s in have} | {s.name for s in lack} == {s.name for s in SERVICES}
    for spec in have:
        if spec.args[:1] == ("-m",) and spec.args[1] != "cli":
            assert module_exists(spec.args[1]), spec
    fake = ServiceSpec("ghost", ("-m", "no_such_package_xyz"), lambda: module_exists("no_such_package_xyz.__main__"))
    assert available_services([fake]) == ([], [fake])
    assert fake.argv() == [sys.executable, "-m", "no_such_package_xyz"]
