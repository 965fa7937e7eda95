"""Credentials from a request: HTTP Basic ``uuid:key`` (OpenWhisk) or ``Bearer uuid:key`` (OpenAI).

Every route verifies the caller's key against Redis before it acts, except the invoke routes
(:data:`DEFERRED_ENDPOINTS`): there a key this worker verified before (:class:`CredentialCache`) is
taken at once, with a :class:`~faas_llm.auth.KeyCheck` that the admission script confirms in the
round trip that queues the invocation (a revoked key: 401, nothing queued). Any error response of
such a request is preceded by a fresh verification (:func:`confirm_deferred`), so a revoked key is
401 before the request's own 400/404/413/429, as when the key is read first.
"""

from __future__ import annotations

import base64
import binascii
import threading

from flask import g, request

from faas_llm.auth import AuthStore, Credentials, Identity
from faas_llm.errors import AuthError, ForbiddenError

#: the routes whose key check may be deferred to the admission script (they all queue an invocation)
DEFERRED_ENDPOINTS = frozenset({
    "openwhisk_actions.invoke_action", "openai.completions", "openai.chat_completions",
})


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


class CredentialCache:
    """``Authorization`` headers this worker verified, with the identity they stand for (carrying its
    :class:`~faas_llm.auth.KeyCheck`). Only verified headers enter; at most ``max_entries`` (cleared
    when full)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, Identity] = {}
        self._lock = threading.Lock()

    def get(self, header: str) -> Identity | None:
        return self._entries.get(header)

    def put(self, header: str, identity: Identity) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[header] = identity

    def forget(self, header: str) -> None:
        with self._lock:
            self._entries.pop(header, None)


def authenticate(store: AuthStore, cache: CredentialCache | None = None) -> Identity:
    """Verify the request's credentials and remember the caller in ``g.identity``.

    With ``cache``, on a deferred endpoint, a header verified before is taken without a read: the
    identity then carries the check the admission script confirms, and ``g.deferred_auth`` is set."""
    header = request.headers.get("Authorization")
    if cache is not None and header and request.endpoint in DEFERRED_ENDPOINTS:
        cached = cache.get(header)
        if cached is not None:
            g.identity = cached
            g.deferred_auth = (store, cache, header)
            return cached
        identity, check = store.verify_checked(credentials_from_header(header))
        cache.put(header, Identity(identity.namespace, identity.uuid, check))
    else:
        identity = store.verify(credentials_from_header(header))
    g.identity = identity
    return identity


def confirm_deferred() -> None:
    """Before an error response: verify a key taken from the cache now (:class:`AuthError` if it is
    no longer valid, and the header is forgotten). Once per request; nothing when not deferred."""
    deferred = g.pop("deferred_auth", None)
    if deferred is None:
        return
    store, cache, header = deferred
    try:
        store.verify(credentials_from_header(header))
    except AuthError:
        cache.forget(header)
        raise


def forget_deferred() -> None:
    """After a 401 of the admission script: drop the request's cached header."""
    deferred = g.pop("deferred_auth", None)
    if deferred is not None:
        deferred[1].forget(deferred[2])


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
