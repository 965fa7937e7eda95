#!/usr/bin/env bash
# Set up (if needed) and run faas-llm's smallest real end-to-end path on this machine:
# build the tiny demo model locally and generate from it offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
MODEL_DIR=${FAAS_LLM_DEMO_DIR:-.faas-llm-demo/tiny}
if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
  .venv/bin/faas-llm model make-demo --size tiny "$MODEL_DIR"
fi
.venv/bin/faas-llm model generate "$MODEL_DIR" --prompt "The serverless platform" --max-tokens 16
