"""The process-level side effects the OpenWhisk action protocol mandates.

- Each activation's identity is exported as ``__OW_*`` environment variables (and ``/init``'s
  ``env``), so the action's code can read them. This is the one place outside
  :mod:`faas_llm.settings` that touches ``os.environ``: the protocol requires it. Writes are
  serialised by a lock; with concurrent activations the last one's values win, as in OpenWhisk.
  Not through ``os.environ[...] = ...``: that calls setenv(3), and glibc never frees a value
  string it replaced (readers may still hold it), so a new activation id per run leaked ~650
  bytes per run (~25 MiB per 40,000 runs, found by ``bench/soak.py``). Each variable instead
  gets one C buffer, given to putenv(3) once and rewritten in place (a longer value gets a new,
  larger buffer; the old one is kept, so nothing is freed under a reader), and the
  ``os.environ`` mapping is updated without calling setenv.
- After each activation the sentinel line goes to stdout and to stderr (log collection reads
  up to it).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"

_env_lock = threading.Lock()
_log_lock = threading.Lock()


#: room for a value in a new buffer (activation ids, deadlines and keys fit; a longer value grows it)
_MIN_VALUE_BYTES = 128


class _CEnvironment:
    """``name=value`` strings owned here and placed in the C environment with putenv(3)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._putenv = libc.putenv
        self._putenv.argtypes = [ctypes.c_char_p]
        self._putenv.restype = ctypes.c_int
        #: name -> its buffer now in the environment; every buffer ever used (never freed)
        self._buffers: dict[bytes, Any] = {}
        self._kept: list[Any] = []

    def set(self, name: bytes, value: bytes) -> None:
        entry = name + b"=" + value + b"\0"
        buffer = self._buffers.get(name)
        if buffer is not None and len(entry) <= len(buffer):
            ctypes.memmove(buffer, entry, len(entry))  # the environment points here already
        else:
            buffer = ctypes.create_string_buffer(max(len(entry), len(name) + 2 + _MIN_VALUE_BYTES))
            ctypes.memmove(buffer, entry, len(entry))
            self._kept.append(buffer)
            self._buffers[name] = buffer
        # (again) the entry of ``name``: cheap, and right even if something else replaced it meanwhile
        if self._putenv(ctypes.cast(buffer, ctypes.c_char_p)) != 0:
            raise OSError(ctypes.get_errno(), "putenv failed")


_c_environment: _CEnvironment | None = None


def _set_without_setenv(name: str, value: str) -> bool:
    """Set one variable in the C environment and in ``os.environ``; False where this cannot be done
    here (no C library putenv, or no CPython ``os.environ`` internals): then the caller uses setenv."""
    global _c_environment
    environ: Any = os.environ
    if not all(hasattr(environ, a) for a in ("_data", "encodekey", "encodevalue")):
        return False
    try:
        if _c_environment is None:
            _c_environment = _CEnvironment()
    except (OSError, AttributeError):
        return False
    raw_name, raw_value = os.fsencode(name), os.fsencode(value)
    if not raw_name or b"=" in raw_name or b"\0" in raw_name + raw_value:
        raise ValueError(f"illegal environment variable {name!r}")
    _c_environment.set(raw_name, raw_value)
    environ._data[environ.encodekey(name)] = environ.encodevalue(value)
    return True


def export_env(values: Mapping[str, str]) -> None:
    """Set ``values`` in the process environment (protocol-mandated; see the module docstring)."""
    with _env_lock:
        for name, value in values.items():
            if os.environ.get(name) == value:
                continue  # already so (the namespace and the action are the same run after run)
            if not _set_without_setenv(name, value):
                os.environ[name] = value


def end_activation() -> None:
    """Write the end-of-activation sentinel on stdout and stderr, flushing both."""
    with _log_lock:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.write(SENTINEL + "\n")
            stream.flush()
