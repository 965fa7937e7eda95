"""gc.freeze of a service's long-lived objects: they leave the collected generations."""

from __future__ import annotations

import gc

from faas_llm.gcfreeze import freeze_long_lived


class Marker:
    pass


def test_objects_alive_at_the_freeze_are_no_longer_walked_by_a_collection() -> None:
    kept = Marker()
    try:
        assert any(o is kept for o in gc.get_objects())
        frozen = freeze_long_lived("a test")
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # a full collection no longer visits it
        later = Marker()
        assert any(o is later for o in gc.get_objects())  # what is allocated after is collected as usual
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
