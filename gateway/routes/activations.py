"""OpenWhisk ``/api/v1``: activations (list, get, result, logs) of the caller's namespace."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from faas_llm.errors import NotFoundError, RequestError
from faas_llm.types import ActivationRecord, check_activation_id
from gateway.context import gateway
from gateway.http_auth import authenticate
from gateway.protocol import ActivationListQuery
from gateway.routes.common import caller_namespace, json_response

bp = Blueprint("openwhisk_activations", __name__, url_prefix="/api/v1")

SUMMARY_FIELDS = ("namespace", "name", "version", "publish", "subject", "activationId", "start", "end", "duration",
                  "annotations", "coldStart", "loadTier", "node")


@bp.before_request
def _authenticate() -> None:
    authenticate(gateway().auth)


def summary(record: ActivationRecord) -> dict[str, Any]:
    """A list entry without ``docs=true``: the record without logs and result, plus ``statusCode``."""
    full = record.model_dump(mode="json")
    return {**{k: full[k] for k in SUMMARY_FIELDS}, "statusCode": record.response.statusCode}


def _record(namespace: str, activation_id: str) -> ActivationRecord:
    _, ns = caller_namespace(namespace)
    try:
        check_activation_id(activation_id)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    record = gateway().activations.get(activation_id)
    # Another namespace's activation is as absent as one that does not exist.
    if record is None or record.namespace != ns:
        raise NotFoundError()
    return record


@bp.get("/namespaces/<namespace>/activations")
def list_activations(namespace: str) -> Response:
    _, ns = caller_namespace(namespace)
    query = ActivationListQuery.from_args(request.args)
    store = gateway().activations
    if query.count:
        if query.name is None:
            total = store.count(ns, since=query.since, upto=query.upto)
        else:
            total = len(store.query(ns, name=query.name, limit=10**9, since=query.since, upto=query.upto))
        return json_response({"activations": total})
    records = store.query(ns, name=query.name, skip=query.skip, limit=query.limit, since=query.since,
                          upto=query.upto)
    if query.docs:
        return json_response([r.model_dump(mode="json") for r in records])
    return json_response([summary(r) for r in records])


@bp.get("/namespaces/<namespace>/activations/<activation_id>")
def get_activation(namespace: str, activation_id: str) -> Response:
    return json_response(_record(namespace, activation_id).model_dump(mode="json"))


@bp.get("/namespaces/<namespace>/activations/<activation_id>/result")
def get_activation_result(namespace: str, activation_id: str) -> Response:
    return json_response(_record(namespace, activation_id).response.model_dump(mode="json"))


@bp.get("/namespaces/<namespace>/activations/<activation_id>/logs")
def get_activation_logs(namespace: str, activation_id: str) -> Response:
    return json_response({"logs": _record(namespace, activation_id).logs})
