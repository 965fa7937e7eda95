"""Optional action code: Python source defining ``main(args)``, run instead of plain generation.

The code sees a global ``llm`` (:class:`LLM`) whose ``generate(**params)`` runs a generation on
the action's model and returns the result object, so a handler can shape prompts and results::

    def main(args):
        out = llm.generate(prompt="Q: " + args["question"] + "\\nA:", max_tokens=32, temperature=0)
        return {"answer": out["text"].strip()}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from faas_llm.errors import DeveloperError, FaasLLMError, InitError


class LLM(Protocol):
    def generate(self, **params: Any) -> dict[str, Any]: ...


Handler = Callable[[dict[str, Any]], Any]


def compile_handler(code: str, main: str, llm: LLM, name: str = "action") -> Handler:
    """Compile ``code`` and return its ``main``; raises :class:`InitError` when that fails."""
    namespace: dict[str, Any] = {"__name__": f"__faas_llm_action_{main}__", "llm": llm}
    try:
        exec(compile(code, f"<action {name}>", "exec"), namespace)
    except Exception as exc:
        raise InitError(f"the action code failed to load: {type(exc).__name__}: {exc}") from None
    function = namespace.get(main)
    if not callable(function):
        raise InitError(f"the action code defines no function {main!r}")
    return function


def call_handler(handler: Handler, args: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """Run the handler; its result must be a JSON object (or array), as OpenWhisk requires."""
    try:
        result = handler(args)
    except FaasLLMError:
        raise
    except Exception as exc:
        raise DeveloperError(f"the action raised {type(exc).__name__}: {exc}") from None
    if not isinstance(result, dict | list):
        raise DeveloperError(f"the action returned {type(result).__name__}, not a JSON object")
    return result
