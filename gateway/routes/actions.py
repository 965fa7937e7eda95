"""OpenWhisk ``/api/v1``: namespaces and actions (create, get, list, delete, invoke)."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, request

from faas_llm.types import parse
from gateway.context import gateway
from gateway.http_auth import authenticate
from gateway.protocol import ActionPut, InvokeQuery, ListQuery, flag
from gateway.routes.common import (
    caller_namespace,
    json_object_body,
    json_response,
    raw_json_response,
    transaction_id,
)
from gateway.services.invoke import status_code_http

bp = Blueprint("openwhisk_actions", __name__, url_prefix="/api/v1")


@bp.before_request
def _authenticate() -> None:
    gw = gateway()
    authenticate(gw.auth, gw.credentials)


@bp.get("/namespaces")
def list_namespaces() -> Response:
    identity, _ = caller_namespace("_")
    return json_response([identity.namespace])


@bp.get("/namespaces/<namespace>/actions")
def list_actions(namespace: str) -> Response:
    _, ns = caller_namespace(namespace)
    query = ListQuery.from_args(request.args, "actions")
    actions = gateway().actions
    if query.count:
        return json_response({"actions": actions.count(ns)})
    return json_response([a.model_dump(mode="json") for a in actions.list(ns, skip=query.skip, limit=query.limit)])


@bp.put("/namespaces/<namespace>/actions/<name>")
def put_action(namespace: str, name: str) -> Response:
    _, ns = caller_namespace(namespace)
    overwrite = flag(request.args, "overwrite")
    body = parse(ActionPut, json_object_body(required=True))
    action = gateway().actions.put(ns, name, body, overwrite=overwrite)
    return json_response(action.model_dump(mode="json"))


@bp.get("/namespaces/<namespace>/actions/<name>")
def get_action(namespace: str, name: str) -> Response:
    _, ns = caller_namespace(namespace)
    return json_response(gateway().actions.get(ns, name).model_dump(mode="json"))


@bp.delete("/namespaces/<namespace>/actions/<name>")
def delete_action(namespace: str, name: str) -> Response:
    _, ns = caller_namespace(namespace)
    return json_response(gateway().actions.delete(ns, name).model_dump(mode="json"))


@bp.post("/namespaces/<namespace>/actions/<name>")
def invoke_action(namespace: str, name: str) -> Response:
    identity, ns = caller_namespace(namespace)
    gw = gateway()
    query = InvokeQuery.from_args(request.args, gw.settings.blocking_wait_max_ms)
    params = json_object_body()
    started = time.perf_counter()
    outcome = gw.invoker.invoke(identity, ns, name, params, transaction_id(), blocking=query.blocking,
                                timeout_ms=query.timeout_ms)
    mode = "blocking" if query.blocking else "nonblocking"
    if outcome.record_json is None:
        gw.metrics.observe_invoke("openwhisk", mode, "accepted", time.perf_counter() - started)
        return json_response({"activationId": outcome.activation_id}, 202, outcome.activation_id)
    # the record as stored (ActivationRecord's own JSON): read, not revalidated and re-encoded
    record = json.loads(outcome.record_json)
    status = status_code_http(record["response"]["statusCode"])
    gw.metrics.observe_invoke("openwhisk", mode, str(status), time.perf_counter() - started)
    if query.result:
        return json_response(record["response"]["result"], status, outcome.activation_id)
    return raw_json_response(outcome.record_json, status, outcome.activation_id)
