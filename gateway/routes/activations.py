"""OpenWhisk ``/api/v1``: activations (list, get, result, logs) of the caller's namespace."""

from __future__ import annotations

from typing import Any

from faas_llm.errors import NotFoundError, RequestError
from faas_llm.types import ActivationRecord, check_activation_id
from gateway.calls import Call, RouteReply, json_reply
from gateway.http_auth import caller_namespace
from gateway.protocol import ActivationListQuery

SUMMARY_FIELDS = ("namespace", "name", "version", "publish", "subject", "activationId", "start", "end", "duration",
                  "annotations", "coldStart", "loadTier", "node")


def summary(record: ActivationRecord) -> dict[str, Any]:
    """A list entry without ``docs=true``: the record without logs and result, plus ``statusCode``."""
    full = record.model_dump(mode="json")
    return {**{k: full[k] for k in SUMMARY_FIELDS}, "statusCode": record.response.statusCode}


def _record(call: Call, namespace: str, activation_id: str) -> ActivationRecord:
    _, ns = caller_namespace(call, namespace)
    try:
        check_activation_id(activation_id)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    record = call.gw.activations.get(activation_id)
    # Another namespace's activation is as absent as one that does not exist.
    if record is None or record.namespace != ns:
        raise NotFoundError()
    return record


def list_activations(call: Call, namespace: str) -> RouteReply:
    _, ns = caller_namespace(call, namespace)
    query = ActivationListQuery.from_args(call.args)
    store = call.gw.activations
    if query.count:
        if query.name is None:
            total = store.count(ns, since=query.since, upto=query.upto)
        else:
            total = len(store.query(ns, name=query.name, limit=10**9, since=query.since, upto=query.upto))
        return json_reply({"activations": total})
    records = store.query(ns, name=query.name, skip=query.skip, limit=query.limit, since=query.since,
                          upto=query.upto)
    if query.docs:
        return json_reply([r.model_dump(mode="json") for r in records])
    return json_reply([summary(r) for r in records])


def get_activation(call: Call, namespace: str, activation_id: str) -> RouteReply:
    return json_reply(_record(call, namespace, activation_id).model_dump(mode="json"))


def get_activation_result(call: Call, namespace: str, activation_id: str) -> RouteReply:
    return json_reply(_record(call, namespace, activation_id).response.model_dump(mode="json"))


def get_activation_logs(call: Call, namespace: str, activation_id: str) -> RouteReply:
    return json_reply({"logs": _record(call, namespace, activation_id).logs})
