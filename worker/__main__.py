"""``python -m worker [--node ID] [celery worker options]``: run this node's Celery worker."""

from __future__ import annotations

import argparse
import sys

from faas_llm.settings import get_settings
from worker.celery_app import create_celery, worker_argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="faas-llm worker", add_help=False)
    parser.add_argument("--node", help="Node id (default: FAAS_LLM_NODE_ID).")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    if args.node:
        settings = settings.model_copy(update={"node_id": args.node})
    app = create_celery(settings)
    app.set_current()
    app.worker_main(worker_argv(settings, extra))


if __name__ == "__main__":
    main()
