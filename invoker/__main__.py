"""``faas-llm-invoker`` / ``python -m invoker`` / ``faas-llm invoker``: run this node's invoker.

SIGTERM and SIGINT stop it gracefully: it stops pulling, lets runs in flight finish, removes its
containers and withdraws its node report.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from faas_llm.gcfreeze import freeze_long_lived
from faas_llm.settings import Settings, get_settings
from invoker.service import Invoker


def main(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    invoker = Invoker(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    invoker.start()
    freeze_long_lived("the invoker")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        invoker.stop()


if __name__ == "__main__":
    main()
