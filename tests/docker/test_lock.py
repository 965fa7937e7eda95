"""requirements.lock (issue 25): the tested package set, hash-pinned, for bootstrap, CI and the images.

Offline checks of what `make lock` wrote and what its users select from it:

- every entry is pinned with ``==`` and has SHA-256 hashes (``pip install --require-hashes`` refuses
  anything else);
- it covers pyproject.toml: every dependency, dev tool and build requirement has an entry inside its
  range (a dependency added without `make lock` fails here, and in scripts/bootstrap.sh);
- torch is the CPU build with the hash PyTorch's CPU index publishes, and no CUDA package is locked;
- the images' selections (scripts/lock_select.py) leave the model stack out of the gateway and node
  images and the dev tools out of all three;
- every Dockerfile installs through docker/install.sh, which installs from the lock with hashes.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
# torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl as https://download.pytorch.org/whl/cpu/torch/
# lists it; the wheel in this machine's /opt/wheels has the same SHA-256
TORCH_CPU_SHA256 = {"2.13.0+cpu": "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"}
MODEL_STACK = {"torch", "transformers", "tokenizers", "safetensors"}
DEV_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "moto", "schemathesis", "pip-audit", "uv", "matplotlib"}


def _load_lock_select() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_select", ROOT / "scripts" / "lock_select.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_select"] = module
    spec.loader.exec_module(module)
    return module


lock_select = _load_lock_select()
ENTRIES = lock_select.parse_lock(LOCK.read_text())


def _selected(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock_select.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return {lock_select.normalize(m.group(1)) for m in map(lock_select._PIN.match, proc.stdout.splitlines()) if m}


def test_every_entry_is_pinned_and_hashed() -> None:
    text = LOCK.read_text()
    assert "make lock" in text.splitlines()[1], "the header names the command that refreshes the lock"
    assert len(ENTRIES) > 50
    for name, entry in ENTRIES.items():
        hashes = [line for line in entry.lines if "--hash=sha256:" in line]
        assert hashes, f"{name} has no hash"
        assert all(re.search(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), name
    requirement_lines = [line for line in text.splitlines() if line and not line[0].isspace() and line[0] != "#"]
    assert len(requirement_lines) == len(ENTRIES), "a line the parser did not take as an entry"
    assert all("==" in line and ";" not in line for line in requirement_lines), "pins only, no markers"


def test_the_lock_covers_pyproject() -> None:
    problems = lock_select.coverage_problems(ENTRIES, ROOT / "pyproject.toml", ["dev"])
    assert not problems, f"run `make lock`: {problems}"


def test_torch_is_the_cpu_build_with_the_official_hash() -> None:
    torch = ENTRIES["torch"]
    assert torch.version in TORCH_CPU_SHA256, f"torch {torch.version}: record the CPU index's SHA-256 here"
    assert torch.lines[1:] and all(TORCH_CPU_SHA256[torch.version] in line for line in torch.lines[1:])
    gpu = [n for n in ENTRIES if n.startswith(("nvidia-", "triton", "pytorch-triton", "cuda-"))]
    assert not gpu, f"CUDA packages locked: {gpu}"


def test_image_selections() -> None:
    services = _selected("--roots", "docker/requirements/services.txt")
    runtime = _selected("--roots", "pyproject.toml")
    assert not services & (MODEL_STACK | DEV_TOOLS), services & (MODEL_STACK | DEV_TOOLS)
    assert {"flask", "gunicorn", "redis", "celery", "kombu", "docker", "boto3"} <= services
    assert MODEL_STACK | {"flask", "celery", "redis"} <= runtime
    assert not runtime & DEV_TOOLS, runtime & DEV_TOOLS
    assert services < runtime < set(ENTRIES)
    assert _selected("--only", "torch") == {"torch"}
    assert _selected("--exclude", "torch") == set(ENTRIES) - {"torch"}


def test_a_root_missing_from_the_lock_is_named(tmp_path: Path) -> None:
    roots = tmp_path / "roots.txt"
    roots.write_text("flask>=3\nno-such-package-xyz>=1\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock_select.py"), "--roots", str(roots)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "no-such-package-xyz" in proc.stderr and "make lock" in proc.stderr


def test_check_names_a_dependency_the_lock_lacks(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"flask>=3.0,<4",', '"flask>=3.0,<4",\n    "no-such-package-xyz>=1",')
                             .replace('"redis>=5.0,<9"', '"redis>=99"'))
    problems = lock_select.coverage_problems(ENTRIES, pyproject, ["dev"])
    assert any("no-such-package-xyz" in p and "not in the lock" in p for p in problems), problems
    assert any(p.startswith("redis>=99") for p in problems), problems


def test_differences_from_an_installed_set() -> None:
    freeze = "flask==99.0\nnew-thing==1.0\n" + "".join(
        f"{e.name}=={e.version}\n" for e in ENTRIES.values() if e.name not in ("flask", "torch"))
    lines = lock_select.differences(ENTRIES, freeze)
    assert len(lines) == 3 and any(line.startswith("flask") and "99.0" in line for line in lines)


@pytest.mark.parametrize("path", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_python_images_install_from_the_lock(path: Path) -> None:
    text = path.read_text()
    if "/opt/faas-llm" not in text:
        pytest.skip("not a Python image")
    assert "sh docker/install.sh" in text
    assert not re.search(r"pip install(?!.*--require-hashes)", text), "every pip install goes through the lock"
    install = (ROOT / "docker" / "install.sh").read_text()
    for line in install.splitlines():
        if re.search(r"\$pip install", line) and "--require-hashes" not in line:
            assert "NOT hash-checked" in install and ("faas_llm-" in line or "TORCH_INDEX" in line), line
