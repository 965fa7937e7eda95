"""The gateway: the OpenWhisk REST API and an OpenAI-compatible API over a Redis queue.

``create_app(settings)`` builds the Flask app; ``python -m gateway`` (``faas-llm-gateway``)
serves it under gunicorn.
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
