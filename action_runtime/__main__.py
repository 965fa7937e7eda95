"""``faas-llm-runtime`` / ``python -m action_runtime``: serve the action runtime (one process)."""

from __future__ import annotations

import logging

from action_runtime.server import RuntimeServer
from faas_llm.settings import Settings, get_settings


def main(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    RuntimeServer(settings).run()


if __name__ == "__main__":
    main()
