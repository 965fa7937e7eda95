#!/usr/bin/env bash
# Create (or reuse) .venv and install faas-llm with its dev tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# torch first and pinned: 2.13.0 is the CPU build this project is developed and tested with
# (an unpinned `torch` can pull a multi-GB CUDA build).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install --quiet "torch==${FAAS_LLM_TORCH_VERSION:-2.13.0}"
fi
stamp=.venv/.faas-llm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PIP install --quiet -e ".[dev]"
  touch "$stamp"
fi
