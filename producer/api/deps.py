"""What the routes share, as typed dependencies: the settings, the Producer, the bearer-token
check, the queue, and reading a path or URL the API may open.

``create_app`` puts the settings, the Producer and the loopback flag on ``app.state``; the
dependencies below read them from there, so a route names only what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ris.common.errors import AccessError, InvalidInput, SourceError
from ris.common.settings import Settings
from ris.producer.api.access import check_source, read_checked
from ris.producer.api.schemas import COLLECTION_PATTERN
from ris.producer.api.security import bearer_matches, unauthorized
from ris.producer.client import Producer


def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def app_producer(request: Request) -> Producer:
    """The app's one Producer (its Celery app, Redis and Milvus clients)."""
    producer: Producer = request.app.state.producer
    return producer


SettingsDep = Annotated[Settings, Depends(app_settings)]
ProducerDep = Annotated[Producer, Depends(app_producer)]
# A collection named in a request (default: RIS_COLLECTION).
Collection = Annotated[str | None, Query(pattern=COLLECTION_PATTERN)]

# Declares the scheme in the OpenAPI document; the check itself is require_token's.
bearer = HTTPBearer(auto_error=False, description="RIS_API_TOKEN")


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <RIS_API_TOKEN>`` (when one
    is set). ``security.TokenGate`` already refused such requests before their body was read;
    this check is the route's own, and what the OpenAPI document shows."""
    if settings.api_token is None:
        return
    given = credentials.credentials.encode() if credentials else b""
    if not bearer_matches(b"Bearer " + given, settings.api_token.get_secret_value().encode()):
        raise unauthorized()


def queue_of(settings: Settings, queue: str | None) -> str:
    """``queue``, or the first of RIS_QUEUES; InvalidInput (422) for one not in RIS_QUEUES."""
    if queue is None:
        return settings.queues[0]
    if queue not in settings.queues:
        raise InvalidInput(f"unknown queue {queue!r} (RIS_QUEUES: {settings.queues})")
    return queue


def query_queue(settings: SettingsDep, queue: str | None = None) -> str:
    """The ``queue`` query parameter, checked by :func:`queue_of`."""
    return queue_of(settings, queue)


QueueDep = Annotated[str, Depends(query_queue)]


@dataclass(frozen=True)
class Access:
    """What this API may open: ``access.check_source`` / ``read_checked`` with its settings
    and whether it listens on loopback only."""

    settings: Settings
    loopback: bool

    def check(self, source: str) -> None:
        """AccessError (403) unless the API may read ``source``."""
        check_source(source, self.settings, self.loopback)

    def read(self, source: str) -> bytes:
        """The bytes at ``source``: AccessError (403) outside what the API may open, 404 for a
        file that is not there, 502 for a fetch that failed."""
        try:
            return read_checked(source, self.settings, self.loopback)
        except AccessError:
            raise  # a PermissionError, so an OSError: not the 502 below
        except SourceError as exc:
            # 404, not SourceError's 422: the request was well formed, its file is missing.
            raise HTTPException(404, f"{source}: {exc}") from None
        except OSError as exc:  # not a project error: a URL fetch that failed
            raise HTTPException(502, f"{source}: cannot fetch: {exc}") from None


def app_access(request: Request) -> Access:
    """The app's :class:`Access`."""
    access: Access = request.app.state.access
    return access


AccessDep = Annotated[Access, Depends(app_access)]
