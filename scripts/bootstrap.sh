#!/usr/bin/env bash
# Create (or reuse) .venv and install faas-llm with its dev tools from requirements.lock, every file checked
# against the lock's SHA-256 (pip --require-hashes). Idempotent: a venv newer than the lock and pyproject.toml
# is left as it is.
#
#   VENV=DIR        the venv to create or update (default .venv)
#   PYTHON=python3  the interpreter to make it with (default python3.11 when on PATH, else python3)
#   LATEST=1        no lock: the newest releases pyproject.toml allows (`make test-latest`)
#   TORCH_INDEX=URL where the torch CPU build comes from (default PyTorch's CPU index)
#
# The lock is for CPython 3.11 on Linux x86_64. Elsewhere (another Python, macOS) this says so and installs
# the newest releases pyproject.toml allows, as LATEST=1 does.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LOCK=requirements.lock
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  command -v python3.11 >/dev/null && PYTHON=python3.11
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }
stamp="$VENV/.faas-llm-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && { [ -n "${LATEST:-}" ] || [ "$stamp" -nt "$LOCK" ]; }; then
  exit 0
fi
platform=$("$py" -c 'import platform, sys; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}-{sys.platform}-{platform.machine()}")')
if [ -z "${LATEST:-}" ] && [ "$platform" != "cpython3.11-linux-x86_64" ]; then
  echo "bootstrap: requirements.lock is for cpython3.11-linux-x86_64, this is $platform:" \
       "installing the newest releases pyproject.toml allows instead (not the tested set)" >&2
  LATEST=1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# torch's CPU build is not on PyPI (its Linux wheels there are CUDA builds): take it from pip's local
# wheel directories (find-links) when they hold it, else from PyTorch's CPU index.
install_torch() {  # ARGS: pip install arguments naming torch
  pip install --quiet --no-index "$@" 2>/dev/null || pip install --quiet --index-url "$TORCH_INDEX" "$@"
}

if [ -n "${LATEST:-}" ]; then
  pip install --quiet --upgrade pip
  if ! pip install --quiet --upgrade --index-url "$TORCH_INDEX" torch; then
    echo "bootstrap: $TORCH_INDEX is unreachable: torch stays at the locked CPU build" >&2
    "$py" scripts/lock_select.py --only torch >"$tmp/torch.txt"
    install_torch --require-hashes --no-deps -r "$tmp/torch.txt"
  fi
  # torch stays the CPU build just installed: an eager upgrade from PyPI would fetch a CUDA build
  "$py" -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' >"$tmp/torch-pin.txt"
  pip install --quiet --upgrade --upgrade-strategy eager -c "$tmp/torch-pin.txt" -e ".[dev]"
else
  "$py" scripts/lock_select.py --only torch >"$tmp/torch.txt"
  locked=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$tmp/torch.txt")
  if [ "$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" != "$locked" ]; then
    install_torch --require-hashes --no-deps -r "$tmp/torch.txt"
  fi
  pip install --quiet --require-hashes --no-deps -r "$LOCK"
  # the project itself: no dependencies left to fetch, and the locked setuptools builds it
  pip install --quiet --no-deps --no-build-isolation -e .
  if ! "$py" scripts/lock_select.py --check pyproject.toml --extra dev || ! pip check >"$tmp/check" 2>&1; then
    cat "$tmp/check" >&2 2>/dev/null || true
    echo "bootstrap: requirements.lock does not cover pyproject.toml: run \`make lock\` and commit the lock" >&2
    exit 1
  fi
fi
touch "$stamp"
