"""Credentials from a request: HTTP Basic ``uuid:key`` (OpenWhisk) or ``Bearer uuid:key`` (OpenAI)."""

from __future__ import annotations

import base64
import binascii

from flask import g, request

from faas_llm.auth import AuthStore, Credentials, Identity
from faas_llm.errors import AuthError, ForbiddenError


def credentials_from_header(header: str | None) -> Credentials:
    """Parse an ``Authorization`` header; any problem is the same :class:`AuthError`."""
    if not header:
        raise AuthError()
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError() from None
    elif scheme.lower() != "bearer":
        raise AuthError()
    return Credentials.parse(value)


def authenticate(store: AuthStore) -> Identity:
    """Verify the request's credentials and remember the caller in ``g.identity``."""
    identity = store.verify(credentials_from_header(request.headers.get("Authorization")))
    g.identity = identity
    return identity


def current_identity() -> Identity:
    identity = getattr(g, "identity", None)
    if identity is None:
        raise AuthError()
    return identity


def resolve_namespace(identity: Identity, namespace: str) -> str:
    """``_`` and the caller's own namespace resolve to it; any other namespace is refused."""
    if namespace in ("_", identity.namespace):
        return identity.namespace
    raise ForbiddenError(f"The supplied authentication is not authorized to access '{namespace}'.")
