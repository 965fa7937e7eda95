"""The start-request contract: how any process asks a node's invoker to start a container of an action.

A start request is an entry of the node's stream (``keys.node_starts(node)``, field
:data:`START_REQUEST_FIELD`: ``{"id", "namespace", "action"}`` as JSON) plus the request's id in the
action's pending-starts set (``keys.action_starts``, scored by its expiry), so a scheduler counts a
start that is on its way. The node's invoker (``invoker.service``) starts the container and removes
the id. The invoker's own scheduler and the migration coordinator both send them.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from faas_llm.errors import ConflictError, NoCapacityError
from faas_llm.keys import Keys
from faas_llm.types import NodeReport, now_ms

#: the stream field that carries a start request
START_REQUEST_FIELD = "request"


def request_start(r: Any, keys: Keys, node: str, namespace: str, action: str, expires_ms: int) -> str:
    """Ask ``node``'s invoker for a container of ``namespace/action``; the request's id."""
    request_id = secrets.token_hex(8)
    payload = json.dumps({"id": request_id, "namespace": namespace, "action": action})
    pipe = r.pipeline(transaction=True)
    pipe.zadd(keys.action_starts(namespace, action), {request_id: expires_ms})
    pipe.xadd(keys.node_starts(node), {START_REQUEST_FIELD: payload}, maxlen=1000, approximate=True)
    pipe.execute()
    return request_id


def parse_start(fields: dict[str, str]) -> tuple[str, str, str]:
    """(namespace, action, request id) of a start-request entry; ``ValueError`` when malformed."""
    try:
        req = json.loads(fields[START_REQUEST_FIELD])
        return str(req["namespace"]), str(req["action"]), str(req["id"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed start request {fields!r}") from exc


def warm_url(r: Any, keys: Keys, node: str, namespace: str, action: str) -> str | None:
    """The URL of a ready (idle or busy) container of the action on ``node``, least active first."""
    raw = r.get(keys.node(node))
    if not raw:
        return None
    rep = NodeReport.model_validate_json(raw)
    for c in sorted(rep.containers, key=lambda c: c.active):
        if c.namespace == namespace and c.action == action and c.url and c.state.value in ("idle", "busy"):
            return c.url
    return None


def ensure_container(r: Any, keys: Keys, node: str, namespace: str, action: str, timeout_s: float,
                     activation_id: str | None = None) -> str:
    """A ready container of the action on ``node`` (asking its invoker to start one if needed); its URL.

    With ``activation_id``, gives up (:class:`ConflictError`) once that activation has its record.
    """
    url = warm_url(r, keys, node, namespace, action)
    if url is not None:
        return url
    request_start(r, keys, node, namespace, action, now_ms() + int(timeout_s * 1000))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = warm_url(r, keys, node, namespace, action)
        if url is not None:
            return url
        if activation_id is not None and r.get(keys.activation(activation_id)):
            raise ConflictError("the activation finished while the destination was starting")
        time.sleep(0.1)
    raise NoCapacityError(f"node {node} did not start a container of {namespace}/{action} in time")
