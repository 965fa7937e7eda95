"""Credentials from a request: HTTP Basic ``uuid:key`` (OpenWhisk) or ``Bearer uuid:key`` (OpenAI).

Every route verifies the caller's key against Redis before it acts, except the invoke routes (the
route table marks them ``Auth.DEFERRED``): there a key this worker verified before
(:class:`~gateway.credentials.CredentialCache`) is taken at once, with a
:class:`~faas_llm.auth.KeyCheck` that the admission script confirms in the round trip that queues the
invocation (a revoked key: 401, nothing queued). Any error response of such a request is preceded by a
fresh verification (:func:`confirm_deferred`), so a revoked key is 401 before the request's own
400/404/413/429, as when the key is read first.
"""

from __future__ import annotations

import base64
import binascii

from faas_llm.auth import Credentials, Identity
from faas_llm.errors import AuthError, ForbiddenError
from gateway.calls import Call


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


def authenticate(call: Call, *, deferrable: bool = False) -> Identity:
    """Verify the call's credentials and remember the caller in ``call.identity``.

    ``deferrable`` (an invoke route): a header this worker verified before is taken without a read;
    the identity then carries the check the admission script confirms, and ``call.deferred_auth`` is set."""
    store, header = call.gw.auth, call.authorization
    if deferrable and header:
        cache = call.gw.credentials
        cached = cache.get(header)
        if cached is not None:
            call.identity, call.deferred_auth = cached, True
            return cached
        identity, check = store.verify_checked(credentials_from_header(header))
        cache.put(header, Identity(identity.namespace, identity.uuid, check))
    else:
        identity = store.verify(credentials_from_header(header))
    call.identity = identity
    return identity


def confirm_deferred(call: Call) -> None:
    """Before an error response: verify a key taken from the cache now (:class:`AuthError` if it is
    no longer valid, and the header is forgotten). Once per call; nothing when not deferred."""
    if not call.deferred_auth:
        return
    call.deferred_auth = False
    try:
        call.gw.auth.verify(credentials_from_header(call.authorization))
    except AuthError:
        call.gw.credentials.forget(call.authorization)
        raise


def forget_deferred(call: Call) -> None:
    """After a 401 of the admission script: drop the call's cached header."""
    if call.deferred_auth:
        call.deferred_auth = False
        call.gw.credentials.forget(call.authorization)


def caller(call: Call) -> Identity:
    if call.identity is None:
        raise AuthError()
    return call.identity


def resolve_namespace(identity: Identity, namespace: str) -> str:
    """``_`` and the caller's own namespace resolve to it; any other namespace is refused."""
    if namespace in ("_", identity.namespace):
        return identity.namespace
    raise ForbiddenError(f"The supplied authentication is not authorized to access '{namespace}'.")


def caller_namespace(call: Call, namespace: str) -> tuple[Identity, str]:
    identity = caller(call)
    return identity, resolve_namespace(identity, namespace)
