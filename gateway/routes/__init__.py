"""The gateway's one route table: each route's method, URL rule, authentication and handler.

A handler takes the request's :class:`~gateway.calls.Call` and the rule's path parameters and returns
a :class:`~gateway.calls.RouteReply`; errors are raised and answered by :mod:`gateway.errors`. Two layers
serve this table with :func:`serve`, so each route is written once: the Flask app registers every
route (``gateway/app.py``), and the WSGI layer under it (``gateway/fastpath.py``) answers the ``hot``
ones itself when the request is plain (a ``Content-Length`` body, a plain query string), without
Flask's request and response objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from gateway.calls import Call, RouteReply
from gateway.http_auth import authenticate
from gateway.routes import actions, activations, openai, ops

Handler = Callable[..., RouteReply]


class Auth(Enum):
    #: no credentials needed
    PUBLIC = "public"
    #: the caller's key is verified against Redis first
    KEY = "key"
    #: a key this worker verified before is taken, confirmed by the admission script (invoke routes)
    DEFERRED = "deferred"


@dataclass(frozen=True)
class Route:
    method: str
    #: werkzeug's rule syntax; each ``<param>`` is one path segment, passed to the handler by name
    rule: str
    handler: Handler
    auth: Auth = Auth.KEY
    #: answered by the WSGI layer under Flask (the warm invoke routes)
    hot: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # werkzeug's default converter: one non-empty path segment
        parts = re.split(r"<([a-z_]+)>", self.rule)
        regex = "".join(f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts))
        object.__setattr__(self, "pattern", re.compile(regex + r"\Z"))

    @property
    def endpoint(self) -> str:
        return f"{self.handler.__module__.rsplit('.', 1)[-1]}.{self.handler.__name__}"


NS = "/api/v1/namespaces/<namespace>"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", ops.health, Auth.PUBLIC),
    Route("GET", "/metrics", ops.metrics, Auth.PUBLIC),
    Route("GET", "/api/v1", ops.api_info, Auth.PUBLIC),
    # OpenWhisk: namespaces, actions, activations
    Route("GET", "/api/v1/namespaces", actions.list_namespaces),
    Route("GET", f"{NS}/actions", actions.list_actions),
    Route("PUT", f"{NS}/actions/<name>", actions.put_action),
    Route("GET", f"{NS}/actions/<name>", actions.get_action),
    Route("DELETE", f"{NS}/actions/<name>", actions.delete_action),
    Route("POST", f"{NS}/actions/<name>", actions.invoke_action, Auth.DEFERRED, hot=True),
    Route("GET", f"{NS}/activations", activations.list_activations),
    Route("GET", f"{NS}/activations/<activation_id>", activations.get_activation),
    Route("GET", f"{NS}/activations/<activation_id>/result", activations.get_activation_result),
    Route("GET", f"{NS}/activations/<activation_id>/logs", activations.get_activation_logs),
    # OpenAI
    Route("GET", "/v1/models", openai.list_models),
    Route("GET", "/v1/models/<name>", openai.get_model),
    Route("POST", "/v1/completions", openai.completions, Auth.DEFERRED, hot=True),
    Route("POST", "/v1/chat/completions", openai.chat_completions, Auth.DEFERRED, hot=True),
)


def serve(route: Route, call: Call, path_args: dict[str, str]) -> RouteReply:
    """Authenticate as the route says, then run its handler (errors raise to the layer's error mapping)."""
    if route.auth is not Auth.PUBLIC:
        authenticate(call, deferrable=route.auth is Auth.DEFERRED)
    return route.handler(call, **path_args)
