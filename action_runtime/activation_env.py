"""The process-level side effects the OpenWhisk action protocol mandates.

- Each activation's identity is exported as ``__OW_*`` environment variables (and ``/init``'s
  ``env``), so the action's code can read them. This is the one place outside
  :mod:`faas_llm.settings` that touches ``os.environ``: the protocol requires it. Writes are
  serialised by a lock; with concurrent activations the last one's values win, as in OpenWhisk.
- After each activation the sentinel line goes to stdout and to stderr (log collection reads
  up to it).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"

_env_lock = threading.Lock()
_log_lock = threading.Lock()


def export_env(values: Mapping[str, str]) -> None:
    """Set ``values`` in the process environment (protocol-mandated; see the module docstring)."""
    with _env_lock:
        os.environ.update(values)


def end_activation() -> None:
    """Write the end-of-activation sentinel on stdout and stderr, flushing both."""
    with _log_lock:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.write(SENTINEL + "\n")
            stream.flush()
