"""Run the API under uvicorn, after checking it is not exposed without a token."""

from __future__ import annotations

import logging

from ris.common.settings import Settings
from ris.producer.api.security import check_exposure

log = logging.getLogger("ris.api")


def run_api(settings: Settings) -> None:
    """Serve the API and web page on ``RIS_API_HOST:RIS_API_PORT`` until stopped."""
    check_exposure(settings)  # before anything heavy is imported or connected
    import uvicorn

    from ris.producer.api.app import create_app

    app = create_app(settings)
    log.info("serving on http://%s:%d", settings.api_host, settings.api_port)
    # No proxy headers: the client address is the peer's, not one a request claims.
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=False,
        server_header=False,
        log_level="info",
    )
