# The action runtime image: the process inside every action container (OpenWhisk action protocol on
# $PORT, Knative runtime contract). Prewarm-capable: with no FAAS_LLM_RUNTIME_MODEL it starts, imports
# the model stack and waits for POST /init; with it, it loads that model at start (Knative).
# Build from the repository root (BuildKit: the CA secret is optional, for a network that re-signs TLS):
#   DOCKER_BUILDKIT=1 docker build -f docker/runtime.Dockerfile -t faas-llm/action-runtime \
#       [--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt] [--build-arg BASE=...] .
# torch is the lock's CPU build, from PyTorch's CPU index, or from docker/wheels/ when that holds the
# wheel (no index reachable). A GPU image: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# (the lock's torch release from that index, not hash-checked: the lock holds the CPU build).
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/lock_select.py ./scripts/
COPY docker/install.sh ./docker/
COPY faas_llm ./faas_llm
COPY gateway ./gateway
COPY invoker ./invoker
COPY action_runtime ./action_runtime
COPY cache_agent ./cache_agent
COPY worker ./worker
COPY cli ./cli
# every package from requirements.lock, hash-checked (docker/install.sh); pip's cache in a build cache
# mount, not in a layer
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    --mount=type=cache,id=faas-llm-pip,target=/root/.cache/pip \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && TORCH_INDEX="${TORCH_INDEX}" sh docker/install.sh runtime \
 && /opt/faas-llm/bin/python -c "import action_runtime.__main__"

FROM ${BASE}
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
