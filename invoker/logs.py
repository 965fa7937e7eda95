"""Log collection from a runtime's stdout and stderr, up to OpenWhisk's end-of-activation sentinel.

A factory's reader threads :meth:`LogCollector.feed` lines as they arrive; after a run the
invoker :meth:`~LogCollector.collect`\\ s each stream up to its sentinel (or EOF, or a short
timeout for a runtime that never wrote it) and gets OpenWhisk-style lines
``"<ISO time> stdout: text"``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import IO

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
STREAMS = ("stdout", "stderr")
#: while nobody collects a runtime's lines (``collecting`` False: a container that runs several activations
#: at once, whose records carry no logs), its reader threads pause this long after each read, so the
#: output (a sentinel per stream per run) is drained in batches instead of one thread wake-up per line;
#: the pipe (64 KiB) absorbs what comes meanwhile
LAZY_READ_S = 0.05


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class LogCollector:
    """Buffered lines of one runtime's output streams."""

    def __init__(self, limit_bytes: int = 10 * 1024 * 1024, max_buffered_lines: int = 10_000) -> None:
        self.limit_bytes = limit_bytes
        self._cond = threading.Condition()
        self._lines: dict[str, deque[tuple[float, str]]] = {s: deque(maxlen=max_buffered_lines) for s in STREAMS}
        self._eof: dict[str, bool] = dict.fromkeys(STREAMS, False)
        #: whether runs collect these lines (see :data:`LAZY_READ_S`)
        self.collecting = True

    # --- producers (reader threads) -------------------------------------------------
    def feed(self, stream: str, line: str, ts: float | None = None) -> None:
        self.feed_lines(stream, [line], ts)

    def feed_lines(self, stream: str, lines: list[str], ts: float | None = None) -> None:
        """Lines that arrived together (one timestamp)."""
        at = time.time() if ts is None else ts
        with self._cond:
            buffered = self._lines[stream]
            for line in lines:
                buffered.append((at, line.rstrip("\r\n")))
            self._cond.notify_all()

    def eof(self, stream: str) -> None:
        with self._cond:
            self._eof[stream] = True
            self._cond.notify_all()

    def follow(self, stream: str, pipe: IO[bytes]) -> threading.Thread:
        """Start a daemon thread feeding ``pipe``'s lines as ``stream`` until EOF."""

        def pump() -> None:
            rest = b""  # a line not yet ended
            try:
                while data := pipe.read1(65536):  # type: ignore[attr-defined]
                    *lines, rest = (rest + data).split(b"\n")
                    if lines:
                        self.feed_lines(stream, [line.decode("utf-8", "replace") for line in lines])
                    if not self.collecting:
                        time.sleep(LAZY_READ_S)
            except (OSError, ValueError):
                pass
            finally:
                if rest:
                    self.feed(stream, rest.decode("utf-8", "replace"))
                self.eof(stream)

        thread = threading.Thread(target=pump, name=f"logs-{stream}", daemon=True)
        thread.start()
        return thread

    # --- the consumer ---------------------------------------------------------------
    def clear(self) -> None:
        """Drop what is buffered (start-up noise before a run)."""
        with self._cond:
            for lines in self._lines.values():
                lines.clear()

    def collect(self, timeout_s: float = 2.0) -> list[str]:
        """Lines of every stream up to its sentinel (consumed), in time order, within the size limit."""
        deadline = time.monotonic() + timeout_s
        taken: list[tuple[float, str, str]] = []
        with self._cond:
            for stream in STREAMS:
                while True:
                    lines = self._lines[stream]
                    found = False
                    while lines:
                        ts, text = lines.popleft()
                        if text == SENTINEL:
                            found = True
                            break
                        taken.append((ts, stream, text))
                    if found or self._eof[stream]:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        taken.sort(key=lambda item: item[0])
        out: list[str] = []
        size = 0
        for ts, stream, text in taken:
            line = f"{_iso(ts)} {stream}: {text}"
            size += len(line)
            if size > self.limit_bytes:
                out.append(f"{_iso(ts)} stderr: Logs were truncated because the total bytes size exceeds the limit "
                           f"of {self.limit_bytes} bytes.")
                break
            out.append(line)
        return out
