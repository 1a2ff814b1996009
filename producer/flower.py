"""``ris flower``: Flower, the Celery monitor, on the project's broker and settings."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ris.common.settings import Settings


def is_loopback(address: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def run_flower(settings: Settings, state_db: Path) -> None:
    """Run Flower until stopped: workers, queues and every task's state and arguments.

    Basic auth comes from ``RIS_FLOWER_BASIC_AUTH``; without it Flower listens on loopback
    only. Its state (the task list) persists in ``state_db`` across restarts.
    """
    from ris.common.celery_app import make_app

    auth = settings.flower_basic_auth
    if auth is None and not is_loopback(settings.flower_address):
        raise SystemExit(
            f"refusing to serve Flower on {settings.flower_address} without authentication: "
            "set RIS_FLOWER_BASIC_AUTH=user:password"
        )
    # Passed through the environment, not argv, so the password stays out of `ps`.
    if auth is not None:
        os.environ["FLOWER_BASIC_AUTH"] = auth.get_secret_value()
    else:  # loopback only: the HTTP API may answer without credentials
        os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    state_db.parent.mkdir(parents=True, exist_ok=True)
    make_app(settings).start(
        [
            "flower",
            f"--address={settings.flower_address}",
            f"--port={settings.flower_port}",
            "--persistent=True",
            f"--db={state_db}",
            "--purge_offline_workers=300",
        ]
    )
