"""Turning generated tokens into text deltas: stop strings and incomplete characters (pure).

A streamed delta must never be taken back: text that might still turn into a stop string
(a suffix that is a prefix of one) or that ends in an incomplete UTF-8 sequence (decoded as
U+FFFD) is held back until the next token settles it.
"""

from __future__ import annotations

from dataclasses import dataclass

REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Visible:
    text: str
    """The text that may be shown so far (without any stop string)."""
    stopped: bool
    """A stop string was found: generation ends and ``text`` is final."""


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still begin a stop string or a character."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    trailing = len(text) - len(text.rstrip(REPLACEMENT))
    return max(hold, trailing)


def visible_text(text: str, stops: list[str], final: bool = False) -> Visible:
    """What of the decoded ``text`` can be delivered; ``final``: generation ended, hold nothing back."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return Visible(text[:cut], True)
    if final:
        return Visible(text, False)
    return Visible(text[: len(text) - _held_back(text, stops)], False)
