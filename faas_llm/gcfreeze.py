"""Keep Python's cyclic garbage collector off the long-lived objects of a service (``gc.freeze``).

A full (generation 2) collection walks every tracked object. In an action runtime that has imported
torch and transformers there are ~360,000 of them, and a full collection took ~180 ms on the development
VM, holding the GIL: under a steady warm load it came every ~20 s and showed up as a ~0.2 s stall of
every request in flight (found with the warm-path bench, issue 11). The objects a service builds at
start (modules, the Flask app, the model and its tokenizer) live as long as the process, so they are
moved to the permanent generation once built: later collections only walk what requests allocate.

No collection runs before the freeze (it would cost the same ~180 ms on the start path): the few
unreachable cycles alive at that moment stay frozen, a bounded one-time cost.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_long_lived(what: str) -> int:
    """Move every object tracked now to the permanent generation; returns how many are frozen in all."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: froze the objects of %s (%d frozen)", what, frozen)
    return frozen
