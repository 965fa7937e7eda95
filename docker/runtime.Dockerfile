# syntax=docker/dockerfile:1
# The action runtime image: the process inside every action container (OpenWhisk action protocol on
# $PORT, Knative runtime contract). Prewarm-capable: with no FAAS_LLM_RUNTIME_MODEL it starts, imports
# the model stack and waits for POST /init; with it, it loads that model at start (Knative).
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t faas-llm/action-runtime .
# CPU torch by default; for CUDA: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/faas-llm/bin:$PATH
RUN python -m venv /opt/faas-llm \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY faas_llm ./faas_llm
COPY gateway ./gateway
COPY invoker ./invoker
COPY action_runtime ./action_runtime
COPY cache_agent ./cache_agent
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-cache-dir . \
 && find /opt/faas-llm -name '__pycache__' -prune -exec rm -rf {} + \
 && python -c "import action_runtime.__main__"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 faas \
 && useradd --system --uid 10001 --gid faas --create-home --home-dir /home/faas faas \
 && install -d -o faas -g faas /var/lib/faas-llm
COPY --from=build /opt/faas-llm /opt/faas-llm
ENV PATH=/opt/faas-llm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FAAS_LLM_DATA_DIR=/var/lib/faas-llm \
    FAAS_LLM_RUNTIME_HOST=0.0.0.0 \
    PORT=8080
USER 10001:10001
WORKDIR /home/faas
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-m", "faas_llm.probes", "runtime"]
ENTRYPOINT ["faas-llm-runtime"]
