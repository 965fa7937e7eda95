# The node image: one image for a node's invoker, cache agent and Celery worker (compose runs each
# as its own service from this image; the command picks the role). No model stack: actions run in
# the action runtime image, started by the invoker's Docker container factory.
# Build from the repository root (BuildKit: the CA secret is optional, for a network that re-signs TLS):
#   DOCKER_BUILDKIT=1 docker build -f docker/node.Dockerfile -t faas-llm/node \
#       [--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt] [--build-arg BASE=...] .
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/lock_select.py ./scripts/
COPY docker/install.sh ./docker/
COPY docker/requirements ./docker/requirements
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
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && sh docker/install.sh services \
 && /opt/faas-llm/bin/python -c "import gateway.__main__, invoker.__main__, cache_agent.__main__, worker.__main__"

FROM ${BASE}
RUN groupadd --system --gid 10001 faas \
 && useradd --system --uid 10001 --gid faas --create-home --home-dir /home/faas faas \
 && install -d -o faas -g faas /var/lib/faas-llm
COPY --from=build /opt/faas-llm /opt/faas-llm
ENV PATH=/opt/faas-llm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FAAS_LLM_DATA_DIR=/var/lib/faas-llm \
    FAAS_LLM_CONTAINER_FACTORY=docker
USER 10001:10001
WORKDIR /home/faas
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-m", "faas_llm.probes", "invoker"]
ENTRYPOINT ["faas-llm"]
CMD ["invoker"]
