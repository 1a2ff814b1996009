"""A cluster of a test module's own: ``ris`` processes pointed at it by RIS_* overrides, and the
producer and store of this process pointed at it the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ris.common.settings import Settings
from ris.common.store import ImageStore, open_store
from ris.producer.client import Producer
from tests.helpers import settings_for


@dataclass
class IsolatedCluster:
    """Its data under ``root``; ``env``: the RIS_* overrides that point a process at it."""

    root: Path
    env: dict[str, str]

    def settings(self) -> Settings:
        """What a ``ris`` process started with ``env`` reads."""
        return settings_for(self.env)

    def producer(self) -> Producer:
        return Producer(self.settings())

    def store(self) -> ImageStore:
        return open_store(self.settings())
