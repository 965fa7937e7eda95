"""The one error tree of faas-llm.

Errors are raised, never returned, and mapped to responses in one place per face
(the gateway's error handlers, the runtime's). Each class knows its HTTP status,
the activation status an invocation that dies of it gets (OpenWhisk's
``response.status`` / ``statusCode``), and its OpenAI error type::

    FaasLLMError                      500  whisk internal error
    ├── ConfigError                        a bad setting (fatal at start-up)
    ├── RequestError                  400  bad input from a client
    │   ├── PayloadTooLargeError      413
    │   └── UnsupportedKindError      400
    ├── AuthError                     401  missing or wrong credentials
    ├── ForbiddenError                403
    ├── NotFoundError                 404
    ├── ConflictError                 409
    ├── ThrottledError                429
    ├── NoCapacityError               503  (recoverable: retry later)
    ├── StoreUnavailableError         503  Redis cannot serve for now (recoverable)
    ├── CheckpointError               500  a corrupt / unreadable checkpoint
    ├── RegistryError                 500  the model registry failed or has no such model
    ├── CacheAgentError               503  the node's cache agent is down or refused
    ├── ActionError                   502  an activation failed
    │   ├── ApplicationError          502  application error (the action returned {error})
    │   ├── DeveloperError            502  action developer error (crash, bad init)
    │   │   └── ActivationTimeoutError     the run outlived its deadline
    │   └── InitError                 502  /init failed
    └── InternalError                 500  a bug or an unexpected platform failure

``recoverable`` says whether retrying the same request later may succeed. :func:`store_unavailable`
says which Redis errors mean that Redis cannot serve *for now*.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar

import redis


class ActivationStatus(IntEnum):
    """OpenWhisk's ``response.statusCode``; :attr:`label` is ``response.status``."""

    SUCCESS = 0
    APPLICATION_ERROR = 1
    DEVELOPER_ERROR = 2
    INTERNAL_ERROR = 3

    @property
    def label(self) -> str:
        return _STATUS_LABELS[self]


_STATUS_LABELS = {
    ActivationStatus.SUCCESS: "success",
    ActivationStatus.APPLICATION_ERROR: "application error",
    ActivationStatus.DEVELOPER_ERROR: "action developer error",
    ActivationStatus.INTERNAL_ERROR: "whisk internal error",
}


class FaasLLMError(Exception):
    """Base of every error faas-llm raises on purpose."""

    http_status: ClassVar[int] = 500
    activation_status: ClassVar[ActivationStatus] = ActivationStatus.INTERNAL_ERROR
    openai_type: ClassVar[str] = "server_error"
    recoverable: ClassVar[bool] = False
    default_message: ClassVar[str] = "An internal error occurred."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-able data (no transaction id: the caller adds it)."""
        return {"error": self.message, **({"details": self.details} if self.details else {})}


class ConfigError(FaasLLMError):
    default_message = "Invalid configuration."


class RequestError(FaasLLMError):
    http_status = 400
    openai_type = "invalid_request_error"
    default_message = "The request content was malformed."


class PayloadTooLargeError(RequestError):
    http_status = 413
    default_message = "The request content was too large."


class UnsupportedKindError(RequestError):
    default_message = "The action kind is not supported."


class AuthError(FaasLLMError):
    http_status = 401
    openai_type = "authentication_error"
    default_message = "The supplied authentication is invalid"


class ForbiddenError(FaasLLMError):
    http_status = 403
    openai_type = "permission_error"
    default_message = "The supplied authentication is not authorized to access this resource."


class NotFoundError(FaasLLMError):
    http_status = 404
    openai_type = "not_found_error"
    default_message = "The requested resource does not exist."


class ConflictError(FaasLLMError):
    http_status = 409
    openai_type = "invalid_request_error"
    default_message = "resource already exists"


class ThrottledError(FaasLLMError):
    http_status = 429
    openai_type = "rate_limit_error"
    recoverable = True
    default_message = "Too many requests."


class NoCapacityError(FaasLLMError):
    http_status = 503
    recoverable = True
    default_message = "There is no capacity to serve the request now."


class StoreUnavailableError(FaasLLMError):
    """Redis is unreachable, timed out, or answered that it cannot serve now (LOADING, READONLY, BUSY)."""

    http_status = 503
    recoverable = True
    default_message = "The activation store is unavailable; retry later."


#: error replies of a Redis that is there but cannot serve now (redis-py raises a plain ResponseError for
#: the codes it has no class for, with the code in ``status_code``; READONLY is its ReadOnlyError)
UNAVAILABLE_REPLIES = frozenset({"LOADING", "READONLY", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})


def store_unavailable(exc: BaseException) -> StoreUnavailableError | None:
    """The :class:`StoreUnavailableError` a Redis error stands for when Redis cannot serve for now:
    unreachable, timed out, or answering LOADING (replaying its AOF), READONLY, BUSY (a long script), ...
    ``None`` for any other error (a bug, a bad command, wrong credentials)."""
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.AuthorizationError)):
        return None  # a configuration error: retrying will not help
    if isinstance(exc, redis.BusyLoadingError):
        reason = "is loading its data set"
    elif isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        reason = "timed out" if isinstance(exc, redis.TimeoutError) else "is unreachable"
    elif isinstance(exc, redis.ResponseError) and _reply_code(exc) in UNAVAILABLE_REPLIES:
        reason = f"answered {_reply_code(exc)}"
    else:
        return None
    return StoreUnavailableError(f"The activation store {reason}; retry later.")


def _reply_code(exc: redis.ResponseError) -> str:
    code = getattr(exc, "status_code", None)
    return str(code) if code else str(exc).split(" ", 1)[0]


class CheckpointError(FaasLLMError):
    default_message = "The checkpoint is invalid."


class RegistryError(FaasLLMError):
    default_message = "The model registry failed."


class CacheAgentError(FaasLLMError):
    http_status = 503
    recoverable = True
    default_message = "The node's cache agent is unavailable."


class ActionError(FaasLLMError):
    http_status = 502
    activation_status = ActivationStatus.DEVELOPER_ERROR
    default_message = "The action failed."


class ApplicationError(ActionError):
    activation_status = ActivationStatus.APPLICATION_ERROR
    openai_type = "invalid_request_error"
    default_message = "The action returned an error."


class DeveloperError(ActionError):
    default_message = "The action did not produce a valid response and exited unexpectedly."


class ActivationTimeoutError(DeveloperError):
    default_message = "The action exceeded its time limit."


class InitError(ActionError):
    default_message = "The action failed to initialize."


class InternalError(FaasLLMError):
    default_message = "An internal error occurred."
