"""docs/openapi.yaml is true: it lists exactly the app's routes, and a schemathesis fuzz run
against the gateway under gunicorn finds no server error and no response that violates it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.settings import Settings
from gateway import create_app
from tests.gateway.conftest import Tenant
from tests.gateway.consumer import QueueConsumer

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch"}


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", re.sub(r"<(?:[^:>]+:)?[^>]+>", "{}", path))


def test_the_document_lists_exactly_the_apps_routes(settings: Settings) -> None:
    doc = yaml.safe_load(DOC.read_text())
    documented = {(m.upper(), _normalise(p)) for p, item in doc["paths"].items() for m in item if m in METHODS}
    app = create_app(settings)
    served = {(m, _normalise(rule.rule)) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    app.extensions["faas_llm_gateway"].redis.close()
    assert documented == served


def test_the_document_is_valid_openapi() -> None:
    from openapi_spec_validator import validate

    validate(yaml.safe_load(DOC.read_text()))


@pytest.fixture
def fuzz_target(
    gunicorn_gateway: str, guest: Tenant, redis_client: redis.Redis, keys: Keys, consumer: QueueConsumer
) -> Iterator[tuple[str, Tenant]]:
    Limiter(redis_client, keys, NamespaceLimits(60, 30)).set_limits(
        "guest", invocations_per_minute=100_000, concurrent_invocations=10_000)
    auth = guest.auth
    requests.put(f"{gunicorn_gateway}/api/v1/namespaces/_/actions/hello", auth=auth,
                 json={"exec": {"kind": "llm", "model": "tiny"}, "parameters": [{"key": "max_tokens", "value": 2}]},
                 timeout=10).raise_for_status()
    yield gunicorn_gateway, guest


# Loaded at import (the file is static); the base URL of the live server is given per call.
schema = schemathesis.openapi.from_path(DOC)


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_fuzz_against_the_document(case: schemathesis.Case, fuzz_target: tuple[str, Tenant]) -> None:
    base, guest = fuzz_target
    namespace = (case.path_parameters or {}).get("namespace")
    # most generated namespaces are someone else's (403); put half of them on the caller's own
    if namespace not in (None, "_", "guest") and len(str(namespace)) % 2:
        case.path_parameters["namespace"] = "_"
    case.call_and_validate(
        base_url=base, headers={"Authorization": f"Bearer {guest.api_key}"}, timeout=30,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance, response_headers_conformance],
    )
