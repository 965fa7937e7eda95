"""Recent invocations per model in Redis: what the prefetch policy reads.

The invoker counts each run (:func:`record_invocation`) into a per-minute sorted set
(``keys.model_popularity_window(minute)``, expiring after the window) and an all-time one
(``keys.model_popularity()``); :func:`recent_counts` sums the minutes of the window.
"""

from __future__ import annotations

from typing import Any

from faas_llm.keys import Keys
from faas_llm.types import now_ms


def record_invocation(r: Any, keys: Keys, model: str, window_s: int, at_ms: int | None = None, *,
                      pipe: Any = None) -> None:
    """``pipe``: queue the writes on this pipeline, which the caller executes, instead."""
    minute = (now_ms() if at_ms is None else at_ms) // 60_000
    key = keys.model_popularity_window(minute)
    own = pipe is None
    if own:
        pipe = r.pipeline(transaction=False)
    pipe.zincrby(key, 1, model)
    pipe.expire(key, window_s + 120)
    pipe.zincrby(keys.model_popularity(), 1, model)
    if own:
        pipe.execute()


def recent_counts(r: Any, keys: Keys, window_s: int, at_ms: int | None = None) -> dict[str, int]:
    """Invocations per model over the last ``window_s`` (whole minutes, the current one included)."""
    now_minute = (now_ms() if at_ms is None else at_ms) // 60_000
    minutes = max(1, window_s // 60)
    pipe = r.pipeline(transaction=False)
    for minute in range(now_minute - minutes + 1, now_minute + 1):
        pipe.zrange(keys.model_popularity_window(minute), 0, -1, withscores=True)
    counts: dict[str, int] = {}
    for rows in pipe.execute():
        for model, score in rows:
            name = model.decode() if isinstance(model, bytes) else model
            counts[name] = counts.get(name, 0) + int(score)
    return counts
