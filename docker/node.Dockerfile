# syntax=docker/dockerfile:1
# The node image: one image for a node's invoker, cache agent and Celery worker (compose runs each
# as its own service from this image; the command picks the role). No model stack: actions run in
# the action runtime image, started by the invoker's Docker container factory.
# Build from the repository root:  docker build -f docker/node.Dockerfile -t faas-llm/node .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/faas-llm/bin:$PATH
WORKDIR /src
COPY docker/requirements/services.txt ./requirements.txt
RUN python -m venv /opt/faas-llm \
 && pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY faas_llm ./faas_llm
COPY gateway ./gateway
COPY invoker ./invoker
COPY action_runtime ./action_runtime
COPY cache_agent ./cache_agent
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-cache-dir --no-deps . \
 && find /opt/faas-llm -name '__pycache__' -prune -exec rm -rf {} + \
 && python -c "import invoker.__main__, cache_agent.__main__"

FROM ${PYTHON_IMAGE}
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
