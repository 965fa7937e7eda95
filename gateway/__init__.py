"""The gateway: the OpenWhisk REST API and an OpenAI-compatible API, the cluster's one front door.

It authenticates, admits and queues invocations and waits for their records; it may touch Redis only
(never a container, an invoker or a cache agent) and imports ``faas_llm`` only.

``create_app(settings)`` builds the Flask app over the route table (``gateway/routes``);
``python -m gateway`` (``faas-llm-gateway``) serves it under gunicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from faas_llm.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway app (see :func:`gateway.app.create_app`)."""
    from gateway.app import create_app as _create_app

    return _create_app(settings)
