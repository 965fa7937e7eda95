#!/usr/bin/env bash
# Refresh requirements.lock (`make lock`): every package faas-llm, its dev tools and its build backend need,
# pinned with the SHA-256 of every file of that release, for CPython 3.11 on Linux x86_64 with the CPU
# build of torch. Resolved by `uv pip compile` against PyPI only (this machine's pip configuration,
# local indexes and caches play no part) and a directory holding the torch CPU wheel.
#
#   bash scripts/lock.sh                       keep every pin that pyproject.toml still allows; add what is new
#   UPGRADE=1 bash scripts/lock.sh             the newest releases pyproject.toml allows
#   UPGRADE_PACKAGE="celery kombu" bash ...    only these to their newest
#   TORCH=2.14.0 bash scripts/lock.sh          another torch CPU release (default: the one locked now)
#
# torch: PyPI's Linux wheels are CUDA builds (with several GB of nvidia-* packages); the CPU build
# (`torch==X+cpu`) is on PyTorch's CPU index, https://download.pytorch.org/whl/cpu. Its wheel is taken
# from a local directory when one holds it (pip's find-links, e.g. /opt/wheels; TORCH_WHEELS=DIR), else
# downloaded from that index into .cache/wheels; either way the lock records the file's SHA-256, and
# bootstrap and the images refuse any other file.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements.lock
PY_VERSION=3.11.2                 # the oldest 3.11 we install on (Debian bookworm's python3, the images' base)
PLATFORM=x86_64-manylinux_2_28    # torch's CPU wheels are manylinux_2_28
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
WHEEL_CACHE=.cache/wheels

locked_torch() { [ -f "$LOCK" ] && sed -n 's/^torch==\([^+ ]*\)+cpu.*/\1/p' "$LOCK" | head -1 || true; }
TORCH=${TORCH:-$(locked_torch)}
TORCH=${TORCH:-2.13.0}
wheel="torch-${TORCH}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"

find_wheel_dir() {
  local dirs=("${TORCH_WHEELS:-}" "$WHEEL_CACHE" ${PIP_FIND_LINKS:-})
  dirs+=($(python3 -m pip config get global.find-links 2>/dev/null || true))
  for d in "${dirs[@]}"; do
    d=${d#file://}
    if [ -n "$d" ] && [ -f "$d/$wheel" ]; then echo "$d"; return 0; fi
  done
  return 1
}

if ! wheel_dir=$(find_wheel_dir); then
  echo "lock: fetching $wheel from $TORCH_INDEX"
  mkdir -p "$WHEEL_CACHE"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --index-url "$TORCH_INDEX" -d "$WHEEL_CACHE" "torch==${TORCH}+cpu"
  wheel_dir=$WHEEL_CACHE
fi

# uv: the venv's (the dev extra has it), one on PATH, or the lock's own release in a scratch venv.
if [ -x .venv/bin/uv ]; then UV=.venv/bin/uv
elif command -v uv >/dev/null; then UV=uv
else
  python3 -m venv .cache/uv-venv
  python3 scripts/lock_select.py --only uv | .cache/uv-venv/bin/pip install --quiet --require-hashes --no-deps -r /dev/stdin
  UV=.cache/uv-venv/bin/uv
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "torch==${TORCH}+cpu" >"$tmp/torch-cpu.txt"
python3 - >"$tmp/build-system.txt" <<'EOF'
import re
text = open("pyproject.toml").read()
block = re.search(r"\[build-system\]\s*requires\s*=\s*\[(.*?)\]", text, re.S).group(1)
print("\n".join(re.findall(r'"([^"]+)"', block)))
EOF
args=()
[ -n "${UPGRADE:-}" ] && args+=(--upgrade)
for p in ${UPGRADE_PACKAGE:-}; do args+=(--upgrade-package "$p"); done
[ -f "$LOCK" ] && cp "$LOCK" "$tmp/out.txt"

"$UV" pip compile --quiet --no-config --native-tls \
  pyproject.toml --extra dev "$tmp/build-system.txt" --override "$tmp/torch-cpu.txt" \
  --index-url https://pypi.org/simple --find-links "$wheel_dir" \
  --python-version "$PY_VERSION" --python-platform "$PLATFORM" \
  --generate-hashes --custom-compile-command "make lock" \
  "${args[@]}" -o "$tmp/out.txt"

# The temporary inputs' paths would differ on every run: name them for what they are.
sed -e "s#--override $tmp/torch-cpu.txt#torch CPU build (scripts/lock.sh; PyTorch's CPU index)#" \
    -e "s#-r $tmp/build-system.txt#pyproject.toml [build-system]#" "$tmp/out.txt" >"$LOCK"
grep -q "^torch==${TORCH}+cpu" "$LOCK" || { echo "lock: torch ${TORCH}+cpu is not in the result" >&2; exit 1; }
echo "lock: $(grep -c '^[A-Za-z0-9].*==' "$LOCK") packages in $LOCK (torch ${TORCH}+cpu from $wheel_dir)"
