#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine (see docs/development.md):
# the GPU tests (pinned-staging loading, engine on the GPU) and bench/gpu_load.py. The machine's own
# python3 with its torch is used; packages it lacks travel as wheels in .whl/ (scripts/gpu_wheels.sh).
# Writes its logs and the bench JSON under ${OUT:-bench/out/gpu}.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "${GPU_SKIP_WHEELS:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
    python3 -c "import torch, transformers, safetensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'safetensors', safetensors.__version__, torch.cuda.get_device_name(0))"
    nproc; free -g | head -2; df -h . | tail -1
} 2>&1 | tee "$OUT/machine.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -W default -o addopts="-ra" \
    tests/checkpoint/test_gpu.py tests/checkpoint/test_gpu_engine.py 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu tests rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu_tests.log"
timeout "${GPU_BENCH_TIMEOUT:-330}" python3 -m bench.gpu_load --size bench --repeats "${GPU_REPEATS:-3}" --sweep \
    --json "$OUT/gpu_load.json" 2>&1 | tee "$OUT/gpu_load.log"
echo "gpu bench rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu_load.log"
# continuous batching on the GPU (issue 18): the runtime's engine (runtime_device auto: the GPU) against
# transformers' continuous batching, small model, 1/16/64 streams (vLLM CUDA is not installed here)
timeout "${GPU_BATCH_TIMEOUT:-240}" python3 -m bench.batch_bench --sizes small --engines ours hf-cb --streams 1 16 64 \
    --rates 50 --open-requests 40 --repeats 1 --timeout 200 --json "$OUT/batch_bench.json" 2>&1 | tee "$OUT/batch_bench.log"
echo "batch bench rc=${PIPESTATUS[0]}" | tee -a "$OUT/batch_bench.log"
