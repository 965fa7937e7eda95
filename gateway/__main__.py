"""``faas-llm-gateway`` / ``python -m gateway``: serve the gateway under gunicorn (settings from FAAS_LLM_*)."""

from __future__ import annotations

from faas_llm.settings import Settings, get_settings
from gateway.gunicorn_conf import GatewayServer


def serve(settings: Settings) -> None:
    GatewayServer(settings).run()


def main() -> None:
    serve(get_settings())


if __name__ == "__main__":
    main()
