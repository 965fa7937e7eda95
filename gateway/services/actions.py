"""Creating and updating actions: kind check, defaults, the merge of an update (no HTTP here)."""

from __future__ import annotations

from typing import Any

from faas_llm.actions_store import ActionStore, bump_version
from faas_llm.errors import RequestError, UnsupportedKindError
from faas_llm.settings import Settings
from faas_llm.types import SUPPORTED_KINDS, Action, Exec, KeyValue, Limits, Scaling, check_entity_name, now_ms, parse
from gateway.protocol import ActionPut


def check_exec(raw: dict[str, Any]) -> Exec:
    """The ``exec`` of a PUT: an unsupported kind is refused first, by name."""
    kind = raw.get("kind")
    if kind not in SUPPORTED_KINDS:
        raise UnsupportedKindError(
            f"kind {kind!r} is not supported; supported kinds: {', '.join(SUPPORTED_KINDS)}"
        )
    return parse(Exec, raw)


def default_limits(settings: Settings) -> Limits:
    return Limits(timeout=settings.action_timeout_ms, memory=settings.action_memory_mb,
                  concurrency=settings.action_concurrency)


def build_action(
    namespace: str, name: str, body: ActionPut, existing: Action | None, defaults: Limits
) -> Action:
    """The action a PUT stores: ``body`` over ``existing`` (an update) or over the defaults (a create).

    Fields left out of an update keep their stored values, as in OpenWhisk; the version's
    patch level goes up on every update. The annotation ``exec`` names the kind.
    """
    if body.exec is not None:
        exec_ = check_exec(body.exec)
    elif existing is not None:
        exec_ = existing.exec
    else:
        raise RequestError("exec undefined: an action needs {\"exec\": {\"kind\": \"llm\", \"model\": ...}}")
    base_limits = existing.limits if existing is not None else defaults
    patch = body.limits.model_dump(exclude_none=True) if body.limits else {}
    limits = parse(Limits, {**base_limits.model_dump(), **patch})
    annotations = body.annotations if body.annotations is not None else (existing.annotations if existing else [])
    annotations = [a for a in annotations if a.key != "exec"] + [KeyValue(key="exec", value=exec_.kind)]
    version = body.version or (bump_version(existing.version) if existing is not None else "0.0.1")
    return Action(
        namespace=namespace,
        name=name,
        version=version,
        publish=body.publish if body.publish is not None else (existing.publish if existing else False),
        exec=exec_,
        limits=limits,
        scaling=body.scaling or (existing.scaling if existing else Scaling()),
        parameters=body.parameters if body.parameters is not None else (existing.parameters if existing else []),
        annotations=annotations,
        updated=now_ms(),
    )


class ActionService:
    def __init__(self, store: ActionStore, settings: Settings) -> None:
        self.store = store
        self.defaults = default_limits(settings)

    def put(self, namespace: str, name: str, body: ActionPut, *, overwrite: bool) -> Action:
        try:
            check_entity_name(name)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return self.store.put(
            namespace, name, lambda existing: build_action(namespace, name, body, existing, self.defaults),
            overwrite=overwrite,
        )

    def get(self, namespace: str, name: str) -> Action:
        return self.store.get(namespace, name)

    def list(self, namespace: str, *, skip: int, limit: int) -> list[Action]:
        return self.store.list(namespace, skip=skip, limit=limit)

    def count(self, namespace: str) -> int:
        return self.store.count(namespace)

    def delete(self, namespace: str, name: str) -> Action:
        return self.store.delete(namespace, name)
