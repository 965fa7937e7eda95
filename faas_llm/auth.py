"""Namespaces and API keys (OpenWhisk's subjects and ``uuid:key`` credentials), in Redis.

A key is ``<uuid>:<secret>`` where the secret is 64 random hex digits. Only a salted
SHA-256 of the secret is stored (``P:auth:{uuid}``); verification recomputes it and
compares in constant time. A slow password hash (scrypt, PBKDF2) buys nothing here:
the secret has 256 bits of entropy, so it cannot be guessed from its hash, and every
request verifies a key, so the hash must be cheap.

One key belongs to exactly one namespace; a namespace may have several keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import redis

from faas_llm.errors import AuthError, ConflictError, NotFoundError, RequestError
from faas_llm.keys import Keys
from faas_llm.types import check_entity_name

HASH_SCHEME = "sha256-salted"
_DUMMY_SALT = "0" * 32


@dataclass(frozen=True)
class KeyCheck:
    """What proves a key is still valid without its secret: its stored hash at its Redis key. A
    gateway that verified a key earlier hands this to the admission script, which refuses the
    invocation (401) when the stored hash is gone or changed (the key was revoked)."""

    key: str
    key_hash: str


@dataclass(frozen=True)
class Identity:
    """Who is calling: the namespace the key belongs to and the key's uuid.

    ``check`` is set when the identity comes from an earlier verification (a gateway worker's cache)
    and must still be confirmed against Redis before anything is done on its behalf."""

    namespace: str
    uuid: str
    check: KeyCheck | None = field(default=None, compare=False, repr=False)

    @property
    def subject(self) -> str:
        """The activation record's ``subject`` (OpenWhisk: the owner of the namespace)."""
        return self.namespace


@dataclass(frozen=True)
class Credentials:
    uuid: str
    secret: str

    @classmethod
    def parse(cls, value: str) -> Credentials:
        """``uuid:secret`` -> Credentials, or :class:`AuthError`."""
        uuid, sep, secret = value.partition(":")
        if not sep or not uuid or not secret:
            raise AuthError()
        return cls(uuid, secret)

    def __str__(self) -> str:
        return f"{self.uuid}:{self.secret}"


def hash_secret(secret: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def new_credentials() -> Credentials:
    return Credentials(str(uuidlib.uuid4()), secrets.token_hex(32))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AuthStore:
    """Namespaces, their keys and key verification."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r: Any = client
        self.keys = keys

    # --- namespaces ---------------------------------------------------------------
    def create_namespace(self, namespace: str) -> None:
        try:
            check_entity_name(namespace)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if namespace == "_":
            raise RequestError("'_' is reserved: it means the caller's own namespace")
        if not self.r.sadd(self.keys.namespaces(), namespace):
            raise ConflictError(f"namespace {namespace!r} already exists")

    def namespace_exists(self, namespace: str) -> bool:
        return bool(self.r.sismember(self.keys.namespaces(), namespace))

    def list_namespaces(self) -> list[str]:
        return sorted(_s(n) for n in self.r.smembers(self.keys.namespaces()))

    def delete_namespace(self, namespace: str) -> int:
        """Remove the namespace, its keys and limits; returns how many keys were revoked."""
        if not self.namespace_exists(namespace):
            raise NotFoundError(f"namespace {namespace!r} does not exist")
        uuids = [_s(u) for u in self.r.smembers(self.keys.namespace_subjects(namespace))]
        pipe = self.r.pipeline(transaction=True)
        for uuid in uuids:
            pipe.delete(self.keys.auth(uuid))
        pipe.delete(self.keys.namespace_subjects(namespace))
        pipe.delete(self.keys.namespace_limits(namespace))
        pipe.srem(self.keys.namespaces(), namespace)
        pipe.execute()
        return len(uuids)

    # --- keys -----------------------------------------------------------------------
    def create_key(self, namespace: str) -> Credentials:
        """A fresh ``uuid:key`` for ``namespace``; the secret is shown once and stored hashed."""
        if not self.namespace_exists(namespace):
            raise NotFoundError(f"namespace {namespace!r} does not exist")
        creds = new_credentials()
        salt = secrets.token_hex(16)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.auth(creds.uuid), mapping={
            "namespace": namespace, "salt": salt, "key_hash": hash_secret(creds.secret, salt), "scheme": HASH_SCHEME,
        })
        pipe.sadd(self.keys.namespace_subjects(namespace), creds.uuid)
        pipe.execute()
        return creds

    def list_keys(self, namespace: str) -> list[str]:
        """The uuids (never the secrets) of a namespace's keys."""
        return sorted(_s(u) for u in self.r.smembers(self.keys.namespace_subjects(namespace)))

    def delete_key(self, uuid: str) -> str:
        """Revoke one key; returns its namespace."""
        namespace = self.r.hget(self.keys.auth(uuid), "namespace")
        if namespace is None:
            raise NotFoundError(f"key {uuid!r} does not exist")
        ns = _s(namespace)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.auth(uuid))
        pipe.srem(self.keys.namespace_subjects(ns), uuid)
        pipe.execute()
        return ns

    def verify(self, credentials: Credentials) -> Identity:
        """The identity of valid credentials, else :class:`AuthError` (same error for every failure)."""
        return self.verify_checked(credentials)[0]

    def verify_checked(self, credentials: Credentials) -> tuple[Identity, KeyCheck]:
        """:meth:`verify`, and the :class:`KeyCheck` that later confirms the key is still valid."""
        auth_key = self.keys.auth(credentials.uuid)
        stored = {_s(k): _s(v) for k, v in (self.r.hgetall(auth_key) or {}).items()}
        salt = stored.get("salt", _DUMMY_SALT)
        expected = stored.get("key_hash", "")
        # Hash even for an unknown uuid, so timing says nothing about which uuids exist.
        actual = hash_secret(credentials.secret, salt)
        if not hmac.compare_digest(actual.encode(), expected.encode()) or "namespace" not in stored:
            raise AuthError()
        return Identity(namespace=stored["namespace"], uuid=credentials.uuid), KeyCheck(auth_key, expected)
