# syntax=docker/dockerfile:1
# The gateway image: OpenWhisk REST API (/api/v1) and OpenAI API (/v1) under gunicorn. No model
# stack (torch, transformers): the gateway never loads a model, so the image stays small.
# Build from the repository root:  docker build -f docker/gateway.Dockerfile -t faas-llm/gateway .
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
 && python -c "import gateway.__main__"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 faas \
 && useradd --system --uid 10001 --gid faas --create-home --home-dir /home/faas faas \
 && install -d -o faas -g faas /var/lib/faas-llm
COPY --from=build /opt/faas-llm /opt/faas-llm
ENV PATH=/opt/faas-llm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FAAS_LLM_DATA_DIR=/var/lib/faas-llm \
    FAAS_LLM_GATEWAY_HOST=0.0.0.0 \
    FAAS_LLM_GATEWAY_PORT=3233
USER 10001:10001
WORKDIR /home/faas
EXPOSE 3233
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "faas_llm.probes", "gateway"]
ENTRYPOINT ["faas-llm-gateway"]
