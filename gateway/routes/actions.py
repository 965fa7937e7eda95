"""OpenWhisk ``/api/v1``: namespaces and actions (create, get, list, delete, invoke)."""

from __future__ import annotations

import json
import time

from faas_llm.types import parse
from gateway.calls import Call, RouteReply, json_reply, raw_json_reply
from gateway.http_auth import caller, caller_namespace
from gateway.protocol import ActionPut, InvokeQuery, ListQuery, flag
from gateway.services.invoke import status_code_http


def list_namespaces(call: Call) -> RouteReply:
    return json_reply([caller(call).namespace])


def list_actions(call: Call, namespace: str) -> RouteReply:
    _, ns = caller_namespace(call, namespace)
    query = ListQuery.from_args(call.args, "actions")
    actions = call.gw.actions
    if query.count:
        return json_reply({"actions": actions.count(ns)})
    return json_reply([a.model_dump(mode="json") for a in actions.list(ns, skip=query.skip, limit=query.limit)])


def put_action(call: Call, namespace: str, name: str) -> RouteReply:
    _, ns = caller_namespace(call, namespace)
    overwrite = flag(call.args, "overwrite")
    body = parse(ActionPut, call.json_object(required=True))
    return json_reply(call.gw.actions.put(ns, name, body, overwrite=overwrite).model_dump(mode="json"))


def get_action(call: Call, namespace: str, name: str) -> RouteReply:
    _, ns = caller_namespace(call, namespace)
    return json_reply(call.gw.actions.get(ns, name).model_dump(mode="json"))


def delete_action(call: Call, namespace: str, name: str) -> RouteReply:
    _, ns = caller_namespace(call, namespace)
    return json_reply(call.gw.actions.delete(ns, name).model_dump(mode="json"))


def invoke_action(call: Call, namespace: str, name: str) -> RouteReply:
    """202 ``{activationId}`` (non-blocking, or the wait ran out); else the record (or with ``result``
    its result) with OpenWhisk's status for it: 200, 502 for the action's own error, 500."""
    identity, ns = caller_namespace(call, namespace)
    gw = call.gw
    query = InvokeQuery.from_args(call.args, gw.settings.blocking_wait_max_ms)
    params = call.json_object()
    started = time.perf_counter()
    outcome = gw.invoker.invoke(identity, ns, name, params, call.tid, blocking=query.blocking,
                                timeout_ms=query.timeout_ms)
    mode = "blocking" if query.blocking else "nonblocking"
    if outcome.record_json is None:
        gw.metrics.observe_invoke("openwhisk", mode, "accepted", time.perf_counter() - started)
        return json_reply({"activationId": outcome.activation_id}, 202, outcome.activation_id)
    # the record as stored (ActivationRecord's own JSON): read, not revalidated and re-encoded
    record = json.loads(outcome.record_json)
    status = status_code_http(record["response"]["statusCode"])
    gw.metrics.observe_invoke("openwhisk", mode, str(status), time.perf_counter() - started)
    if query.result:
        return json_reply(record["response"]["result"], status, outcome.activation_id)
    return raw_json_reply(outcome.record_json.encode(), status, outcome.activation_id)
