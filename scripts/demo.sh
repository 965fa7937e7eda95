#!/usr/bin/env bash
# README's main command: faas-llm on its embedded default, end to end, on this machine.
#
# A one-node cluster (`faas-llm up --detach`: embedded Redis, gateway, invoker, cache agent,
# Celery worker) with its own data dir and properties file under .faas-llm-demo/; the tiny demo
# model built locally (nothing is downloaded from a model hub) and pushed to the registry; an
# action invoked cold (the model comes from the registry through the cache agent) then warm;
# the two activation records' timings side by side; a streamed answer. The cluster is stopped on
# exit, whatever happens. Every line printed comes from the running system.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
DEMO=${FAAS_LLM_DEMO_DIR:-.faas-llm-demo}
mkdir -p "$DEMO"
DEMO=$(cd "$DEMO" && pwd)
export FAAS_LLM_DATA_DIR="$DEMO/data" FAAS_LLM_PROPERTIES_FILE="$DEMO/props"
export FAAS_LLM_DRAM_CAPACITY_BYTES=${FAAS_LLM_DRAM_CAPACITY_BYTES:-536870912}
FL=.venv/bin/faas-llm
PY=.venv/bin/python
MODEL_DIR="$DEMO/tiny"
PROMPT="The serverless platform"

step() { printf '\n== %s\n' "$*"; }

# A previous demo left running (or killed) is stopped, and each run starts from empty caches.
$FL down >/dev/null 2>&1 || true
rm -rf "$FAAS_LLM_DATA_DIR"
PORT=${FAAS_LLM_DEMO_PORT:-$($PY -c "from faas_llm.redis_server import free_port; print(free_port())")}

stop() {
  status=$?
  trap - EXIT INT TERM
  if [ "$status" -ne 0 ]; then
    echo "demo failed (exit $status); service logs are in $FAAS_LLM_DATA_DIR/logs" >&2
    tail -n 20 "$FAAS_LLM_DATA_DIR/up.log" >&2 2>/dev/null || true
  fi
  step "stopping the cluster"
  $FL down || true
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT TERM

step "starting a one-node cluster (faas-llm up --detach)"
$FL up --detach --port "$PORT"

step "the tiny demo model: built locally, pushed to the registry"
if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
  $FL model make-demo --size tiny "$MODEL_DIR"
fi
$FL model push "$MODEL_DIR" --name tiny-llama

step "an action serving it"
$FL action create hello --model tiny-llama -p max_tokens 24

show() {  # the generated text and the timings the runtime reported, from a result file
  $PY - "$1" <<'EOF'
import json
import sys

result = json.load(open(sys.argv[1]))
timings = result["timings"]
print(f"  text: {result['text']!r}")
print(f"  cold_start={timings['cold_start']} load_tier={timings['load_tier']} load_s={timings['load_s']:.3f} "
      f"init_s={timings['init_s']:.3f} ttft_s={timings['ttft_s']:.4f} tokens/s={timings['tokens_per_s']:.0f}")
EOF
}

step "invoke 1 (cold: a new container loads the model)"
$FL action invoke hello -p prompt "$PROMPT" --result >"$DEMO/cold.json"
show "$DEMO/cold.json"

step "invoke 2 (warm: the same container)"
$FL action invoke hello -p prompt "$PROMPT" --result >"$DEMO/warm.json"
show "$DEMO/warm.json"

step "the two activation records side by side (faas-llm activation compare --last 2)"
$FL activation compare --last 2

step "a streamed answer (OpenAI streaming endpoint; tokens print as they are generated)"
$FL action invoke hello -p prompt "$PROMPT" -p max_tokens 32 --stream
echo
echo "(the demo model has random weights from a fixed seed: its text is noise, its timings are real)"
