"""Re-running a streamed activation without the client seeing text twice (or missing any).

A streamed run writes its tokens to the activation's token stream as it goes. If its invoker
dies mid-run, the invocation is reclaimed and run again elsewhere, from the start. The client
is still reading the same token stream, so the re-run must not write what was already
delivered: :class:`ReplayFilter` drops the first ``len(delivered text)`` characters (and
``len(delivered ids)`` token ids) of the re-run and passes the rest on.

This is exact because every attempt of a streamed activation generates the same tokens:
greedy decoding is deterministic, and sampling draws token *i* from ``(seed, i)``; a streamed
invocation that gives no seed gets one derived from its activation id (:func:`replay_seed`),
so all attempts draw the same tokens. If a re-run's prefix ever differs from what was
delivered (it should not), the filter still never repeats or drops characters of the client's
stream; it logs the divergence.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faas_llm.activations import TOKEN_FIELD, TOKENS_DONE
from faas_llm.genparams import SEED_BITS

log = logging.getLogger(__name__)
Sink = Callable[[dict[str, Any]], None]


def replay_seed(activation_id: str) -> int:
    """A sampling seed that is the same for every attempt of one activation."""
    digest = hashlib.sha256(f"faas-llm-replay:{activation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**SEED_BITS)


def with_replay_seed(value: dict[str, Any], activation_id: str) -> dict[str, Any]:
    """``value`` with a seed (its own if given), so every attempt of a streamed run is reproducible."""
    if value.get("seed") is None:
        value = {**value, "seed": replay_seed(activation_id)}
    return value


@dataclass
class Delivered:
    """What a token stream already holds: the client has (or will have) read exactly this."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    done: bool = False


def delivered(r: Any, stream_key: str) -> Delivered:
    """Read an activation's token stream (``XRANGE``) and add up the text and ids it carries."""
    out = Delivered()
    for _entry_id, fields in r.xrange(stream_key) or []:
        raw = fields.get(TOKEN_FIELD) if TOKEN_FIELD in fields else fields.get(TOKEN_FIELD.encode())
        try:
            chunk = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if not isinstance(chunk, dict):
            continue
        if chunk.get(TOKENS_DONE):
            out.done = True
            continue
        out.text += str(chunk.get("text") or "")
        out.token_ids += [int(i) for i in chunk.get("token_ids") or []]
    return out


class ReplayFilter:
    """A token sink for a re-run: swallows what was delivered, forwards the rest to ``sink``."""

    def __init__(self, before: Delivered, sink: Sink) -> None:
        self.before = before
        self.sink = sink
        self.replayed_text = ""
        self.replayed_ids: list[int] = []
        self.diverged = False

    def __call__(self, chunk: dict[str, Any]) -> None:
        if self.before.done:  # the client's stream is complete already: add nothing to it
            return
        text = str(chunk.get("text") or "")
        ids = [int(i) for i in chunk.get("token_ids") or []]
        skip_chars = max(0, len(self.before.text) - len(self.replayed_text))
        skip_ids = max(0, len(self.before.token_ids) - len(self.replayed_ids))
        self.replayed_text += text[:skip_chars]
        self.replayed_ids += ids[:skip_ids]
        self._check()
        rest_text, rest_ids = text[skip_chars:], ids[skip_ids:]
        if rest_text or rest_ids:
            self.sink({**chunk, "text": rest_text, "token_ids": rest_ids})

    def _check(self) -> None:
        if self.diverged:
            return
        if not self.before.text.startswith(self.replayed_text) or \
                self.before.token_ids[:len(self.replayed_ids)] != self.replayed_ids:
            self.diverged = True
            log.warning("a re-run's stream differs from what was delivered (%d chars in); the client keeps its "
                        "text and gets the re-run's continuation", len(self.replayed_text))


def stream_sink(r: Any, stream_key: str, sink: Sink) -> tuple[Sink, Delivered]:
    """The sink for a streamed run: ``sink`` itself when nothing was streamed yet (a first attempt),
    else a :class:`ReplayFilter` (checked on every attempt: an entry handed back or abandoned on
    shutdown keeps its attempt number)."""
    before = delivered(r, stream_key)
    if not before.text and not before.token_ids and not before.done:
        return sink, before
    return ReplayFilter(before, sink), before
